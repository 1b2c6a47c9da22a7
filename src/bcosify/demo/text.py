"""``bcosify demo --text``: the B-cos LM job end to end on the synthetic text task.

Train a small BERT (a transformers ``BertForSequenceClassification`` from a config, random
weights) on :class:`~bcosify.data.text.SyntheticTexts` with the ``standard`` recipe (the
"pretrained" original), B-cosify and fine-tune it (``bcosify-lm``), and train the same B-cos
architecture from random weights with the same budget (``bcos-scratch``). Then measure accuracy
and, for the B-cosified model's own explanation and every post-hoc method on the original (and,
as a control, on the B-cosified model), the token pointing game, comprehensiveness, sufficiency
and time per text, each mean with a bootstrap 95% interval over texts. Writes ``report.html``
(with the texts' tokens highlighted) and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import html
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.text import SPECIAL_TOKENS, SyntheticTexts
from ..errors import ModelSourceError
from ..evaluate import TEXT_EXPLAINER_NAMES, bootstrap_interval, build_text_explainer, correct
from ..evaluate.text import (
    erasure_scores,
    timed_attribution,
    token_pointing_game,
)
from ..explain.text import token_html
from ..report.html import Report, Table
from ..serialization import write_text
from ..train import get_recipe, train

__all__ = ["BCOS", "ORIGINAL", "TEXT_PRESETS", "TextDemoSettings", "run_text_demo"]

ORIGINAL, BCOS = "original", "B-cosified"
MODELS = {
    "original": "original (standard recipe)",
    "bcosified": "B-cosified (bcosify-lm)",
    "scratch": "B-cos from scratch (bcos-scratch)",
}


@dataclass(frozen=True)
class TextDemoSettings:
    """The task, the budgets and the evaluation of a text demo run (see :data:`TEXT_PRESETS`).

    The B-cosified and the from-scratch model get the same budget (``bcos_epochs`` at
    ``bcos_lr``); every run warms up over its first 10% of steps. The explanations are of the
    label, on the first ``explained`` test texts; ``gallery`` of them are shown in the report.
    """

    num_train: int = 4000
    num_test: int = 500
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    original_epochs: int = 8
    bcos_epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    bcos_lr: float = 1e-3
    explained: int = 200
    ig_steps: int = 50
    lime_samples: int = 200
    gallery: int = 8
    seed: int = 0


TEXT_PRESETS = {
    "default": TextDemoSettings(),
    # a smoke test: seconds, meaningless numbers
    "test": TextDemoSettings(
        num_train=128,
        num_test=32,
        hidden=16,
        layers=1,
        heads=2,
        original_epochs=1,
        bcos_epochs=1,
        batch_size=32,
        explained=8,
        ig_steps=4,
        lime_samples=16,
        gallery=3,
    ),
}


def original_model(data: SyntheticTexts, settings: TextDemoSettings) -> nn.Module:
    """The small BERT of the demo, from random weights seeded by ``settings.seed``."""
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(
            "the text demo needs transformers: pip install 'bcosify[transformers]'"
        ) from None

    config = transformers.BertConfig(
        vocab_size=data.tokenizer.vocab_size,
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=2 * settings.hidden,
        max_position_embeddings=data.max_length,
        num_labels=len(data.classes),
        pad_token_id=data.tokenizer.pad_token_id,
    )
    torch.manual_seed(settings.seed)
    return transformers.BertForSequenceClassification(config)


def _trained(
    model: nn.Module,
    name: str,
    data: SyntheticTexts,
    settings: TextDemoSettings,
    out: Path,
    progress: bool,
) -> tuple[nn.Module, float]:
    """``model`` trained with recipe ``name``; returns it and the training seconds."""
    steps = len(data) // settings.batch_size
    epochs, lr = (
        (settings.original_epochs, settings.lr)
        if name == "standard"
        else (settings.bcos_epochs, settings.bcos_lr)
    )
    recipe = get_recipe(
        name,
        epochs=epochs,
        batch_size=settings.batch_size,
        lr=lr,
        warmup_steps=max(1, steps * epochs // 10),  # 10% warm-up, as B-cos LM
        seed=settings.seed,
        checkpoint_every=10**6,
    )
    started = time.perf_counter()
    result = train(model, data, recipe, out, progress=progress)
    return result.model.eval(), time.perf_counter() - started


def _explained(test: SyntheticTexts, count: int) -> dict[str, Tensor]:
    """Token ids, masks, labels, evidence and candidates (the word tokens) of the first
    ``count`` test texts."""
    index = range(min(count, len(test)))
    ids = torch.stack([test[i][0] for i in index])
    special = torch.tensor(
        [test.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != "[UNK]"]
    )
    mask = (ids != test.tokenizer.pad_token_id).long()
    return {
        "ids": ids,
        "mask": mask,
        "labels": torch.tensor([test[i][1] for i in index]),
        "evidence": torch.stack([test.evidence_mask(i) for i in index]),
        "candidates": mask.bool() & ~torch.isin(ids, special),
    }


def _scores(
    name: str, model: nn.Module, batch: dict[str, Tensor], settings: TextDemoSettings, pad: int
) -> tuple[dict[str, Any], Tensor]:
    """The metrics of explainer ``name`` on ``model`` (intervals as dicts), and its values."""
    options = {
        "integrated_gradients": {"n_steps": settings.ig_steps},
        "lime": {"n_samples": settings.lime_samples, "seed": settings.seed},
    }.get(name, {})
    explainer = build_text_explainer(name, model, **options)
    values, seconds = timed_attribution(explainer, batch["ids"], batch["mask"], batch["labels"])
    pointing = token_pointing_game(values, batch["evidence"], batch["candidates"])
    erasure = erasure_scores(
        model,
        batch["ids"],
        batch["mask"],
        values,
        batch["labels"],
        batch["candidates"],
        pad_token_id=pad,
    )
    row = {
        "pointing": asdict(bootstrap_interval(pointing)),
        "comprehensiveness": asdict(bootstrap_interval(erasure.comprehensiveness)),
        "sufficiency": asdict(bootstrap_interval(erasure.sufficiency)),
        "ms_per_text": 1000 * seconds,
    }
    return row, values


def run_text_demo(
    settings: TextDemoSettings, out: Path, *, progress: bool = False
) -> dict[str, Any]:
    """Run the text demo (see the module docstring); write ``report.html`` and
    ``metrics.json`` to ``out`` and return the metrics.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> metrics = run_text_demo(TEXT_PRESETS["test"], out)
        >>> sorted(metrics["accuracy"]), (out / "report.html").is_file()
        (['bcosified', 'original', 'scratch'], True)
    """
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = SyntheticTexts("train", settings.num_train, seed=settings.seed)
    test = SyntheticTexts("test", settings.num_test, seed=settings.seed)
    with tempfile.TemporaryDirectory() as runs:
        root = Path(runs)
        fresh = original_model(data, settings)
        original, original_s = _trained(fresh, "standard", data, settings, root / "o", progress)
        network = original.model  # the transformers model inside the TextClassifier
        bcosified, bcosified_s = _trained(
            network, "bcosify-lm", data, settings, root / "b", progress
        )
        scratch, scratch_s = _trained(
            original_model(data, settings), "bcos-scratch", data, settings, root / "s", progress
        )
    accuracy = {}
    for key, model, seconds in (
        ("original", original, original_s),
        ("bcosified", bcosified, bcosified_s),
        ("scratch", scratch, scratch_s),
    ):
        accuracy[key] = {
            "top1": asdict(bootstrap_interval(correct(model, test).float())),
            "training_seconds": seconds,
        }
    batch = _explained(test, settings.explained)
    pad = int(test.tokenizer.pad_token_id)
    # the post-hoc methods on the original (the comparison B-cos LM makes) and, as a control
    # on one model and one kind of probability, on the B-cosified model
    rows, values = [], {}
    row, values["bcos", BCOS] = _scores("bcos", bcosified, batch, settings, pad)
    rows.append({"explainer": "bcos", "model": BCOS, **row})
    for model_name, model in ((ORIGINAL, original), (BCOS, bcosified)):
        for name in TEXT_EXPLAINER_NAMES[1:]:
            row, values[name, model_name] = _scores(name, model, batch, settings, pad)
            rows.append({"explainer": name, "model": model_name, **row})
    chance = (batch["evidence"] & batch["candidates"]).sum(1) / batch["candidates"].sum(1)
    metrics: dict[str, Any] = {
        "settings": asdict(settings),
        "classes": test.classes,
        "accuracy": accuracy,
        "explanations": rows,
        "pointing_chance": float(chance.mean()),
        "explained": len(batch["ids"]),
    }
    metrics["targets"] = targets(metrics)
    metrics["headline"] = headline(metrics)
    metrics["total_seconds"] = time.perf_counter() - started
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _report(out, metrics, test, batch, values)
    return metrics


def targets(metrics: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, met or not: accuracy within 2 points of the original's; the
    pointing game and comprehensiveness of the B-cos explanation above every post-hoc method's
    on the original (and, as a control, on the B-cosified model)."""
    accuracy = metrics["accuracy"]
    ours, original = accuracy["bcosified"]["top1"]["mean"], accuracy["original"]["top1"]["mean"]
    mine = next(r for r in metrics["explanations"] if r["explainer"] == "bcos")
    result: dict[str, Any] = {"accuracy": {"met": ours >= original - 0.02}}
    for on in (ORIGINAL, BCOS):
        others = [r for r in metrics["explanations"] if r["model"] == on and r is not mine]
        for metric in ("pointing", "comprehensiveness"):
            best = max(others, key=lambda r: r[metric]["mean"])
            result[f"{metric} vs {on}"] = {
                "met": mine[metric]["mean"] > best[metric]["mean"],
                "intervals_apart": mine[metric]["low"] > best[metric]["high"],
                "best": best["explainer"],
                "best_mean": best[metric]["mean"],
            }
    return result


def _target_text(target: dict[str, Any]) -> str:
    if target["met"]:
        apart = "intervals apart" if target["intervals_apart"] else "intervals overlap"
        return f"met (best: {target['best']}, {target['best_mean']:.3f}; {apart})"
    return f"not met (best: {target['best']}, {target['best_mean']:.3f})"


def headline(metrics: dict[str, Any]) -> list[str]:
    """The results in a few lines, targets included."""
    accuracy, t = metrics["accuracy"], metrics["targets"]
    ours, original = accuracy["bcosified"]["top1"]["mean"], accuracy["original"]["top1"]["mean"]
    mine = next(r for r in metrics["explanations"] if r["explainer"] == "bcos")
    return [
        f"accuracy: original {original:.3f}, B-cosified {ours:.3f}, from scratch "
        f"{accuracy['scratch']['top1']['mean']:.3f}; within 2 points of the original: "
        f"{'met' if t['accuracy']['met'] else 'not met'}",
        f"B-cos pointing game {mine['pointing']['mean']:.3f} (a uniform pick: "
        f"{metrics['pointing_chance']:.3f}); above every post-hoc method on the original: "
        f"{_target_text(t['pointing vs original'])}",
        f"B-cos comprehensiveness {mine['comprehensiveness']['mean']:.3f}; above every post-hoc "
        f"method on the original: {_target_text(t['comprehensiveness vs original'])}",
        "control, post-hoc methods on the B-cosified model: pointing game "
        f"{_target_text(t['pointing vs B-cosified'])}; comprehensiveness "
        f"{_target_text(t['comprehensiveness vs B-cosified'])}",
    ]


def interval_text(value: dict[str, Any]) -> str:
    """``mean [low, high]`` of an interval as :func:`run_text_demo` stores it.

    Example:
        >>> interval_text({"mean": 0.5, "low": 0.4, "high": 0.61})
        '0.500 [0.400, 0.610]'
    """
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def accuracy_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """``[model, top-1 [95%], training s]`` per model."""
    return [
        [MODELS[key], interval_text(v["top1"]), f"{v['training_seconds']:.0f}"]
        for key, v in metrics["accuracy"].items()
    ]


def explanation_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """``[explainer, model, pointing, comprehensiveness, sufficiency, ms per text]`` per row."""
    return [
        [
            r["explainer"],
            r["model"],
            interval_text(r["pointing"]),
            interval_text(r["comprehensiveness"]),
            interval_text(r["sufficiency"]),
            f"{r['ms_per_text']:.2f}",
        ]
        for r in metrics["explanations"]
    ]


EXPLANATION_HEADER = [
    "explainer",
    "model",
    "pointing game [95%]",
    "comprehensiveness [95%]",
    "sufficiency [95%]",
    "ms per text",
]


def _report(
    out: Path,
    metrics: dict[str, Any],
    test: SyntheticTexts,
    batch: dict[str, Tensor],
    values: dict[tuple[str, str], Tensor],
) -> Path:
    """``report.html``: the tables, and a few texts with their tokens highlighted by the B-cos
    explanation and by each post-hoc method on the original."""
    report = Report(
        "bcosify demo: B-cos language models",
        "A small BERT trained on the synthetic topic task, B-cosified and fine-tuned, against "
        "the same B-cos architecture trained from scratch; the B-cos explanation against "
        "post-hoc methods. Evidence words (un-negated keywords of the label's topic) are "
        "underlined; red is evidence for the label, blue against it.",
        headline=metrics["headline"],
    )
    report.tables.append(
        Table("Accuracy", ["model", "top-1 [95%]", "training s"], accuracy_rows(metrics))
    )
    report.tables.append(
        Table(
            "Explanations of the label",
            EXPLANATION_HEADER,
            explanation_rows(metrics),
            note=f"{metrics['explained']} test texts; comprehensiveness: higher is better, "
            "sufficiency: lower is better, each on its own model's probabilities (sigmoid for "
            f"B-cos, softmax for the original); a uniform pick scores "
            f"{metrics['pointing_chance']:.3f} in the pointing game.",
            highlight=[0],
        )
    )
    shown = [("bcos", BCOS)] + [(n, ORIGINAL) for n in TEXT_EXPLAINER_NAMES[1:]]
    parts = []
    for i in range(min(metrics["settings"]["gallery"], len(batch["ids"]))):
        keep = batch["candidates"][i]
        words = test.tokenizer.convert_ids_to_tokens(batch["ids"][i][keep].tolist())
        evidence = batch["evidence"][i][keep].tolist()
        label = test.classes[int(batch["labels"][i])]
        parts.append(f"<h3>{html.escape(label)}</h3><table class='gallery'>")
        for name, model in shown:
            row = values[name, model][i][keep].tolist()
            tokens = token_html(words, row, underline=evidence)
            parts.append(
                f"<tr><td>{html.escape(name)} ({html.escape(model)})</td>"
                f"<td style='text-align: left'>{tokens}</td></tr>"
            )
        parts.append("</table>")
    report.sections.append(("Texts", "\n".join(parts)))
    return report.write(out)
