"""B-cos language models, measured on the synthetic text task with ground-truth evidence.

Run it as::

    .venv/bin/python benchmarks/bench_text.py --write docs/benchmarks.md

On :class:`bcosify.data.text.SyntheticTexts` (4 topics; a topic's keywords planted among filler
words and negated keywords of the other topics, with the word-level tokenizer):

1. Original: a small BERT (``transformers.BertForSequenceClassification`` from a config,
   random weights) trained with the ``standard`` recipe (cross-entropy); the "pretrained" model.
2. B-cosified: the original converted with the defaults (B = 2, no biases, pooler tanh ->
   identity) and fine-tuned with the ``bcosify-lm`` recipe (BCE), against the same B-cos
   architecture trained from random weights (``bcos-scratch``) with the same budget.
   Accuracy on the test split with bootstrap 95% intervals over texts.
3. Explanations of the label on test texts: the B-cosified model's own explanation against
   Captum's Saliency, InputXGradient, IntegratedGradients (50 steps), DeepLift, Occlusion and
   LIME on the original (``bcosify.evaluate.text``). Token pointing game (is the top word an
   un-negated keyword of the label's topic), comprehensiveness and sufficiency (ERASER, the
   top 1/5/10/20/50% words removed or kept, each model's own probabilities), with bootstrap
   95% intervals over texts, and the time per explanation.

Under a shared machine the timings are noisy: compare them within one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from common import command_line, load_average, machine, publish
from torch import nn

from bcosify.data.text import SPECIAL_TOKENS, SyntheticTexts
from bcosify.evaluate import Interval, bootstrap_interval, correct
from bcosify.evaluate.text import (
    TEXT_EXPLAINER_NAMES,
    build_text_explainer,
    erasure_scores,
    timed_attribution,
    token_pointing_game,
)
from bcosify.train import get_recipe, train

SECTION = "bench_text"
ORIGINAL, BCOS = "original", "B-cosified"


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of a run."""

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
    threads: int = 1
    seed: int = 0


QUICK = Settings(
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
)


def original_model(data: SyntheticTexts, settings: Settings) -> nn.Module:
    import transformers

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


def recipe(name: str, settings: Settings, epochs: int, lr: float, steps: int) -> Any:
    return get_recipe(
        name,
        epochs=epochs,
        batch_size=settings.batch_size,
        lr=lr,
        warmup_steps=max(1, steps * epochs // 10),  # 10% warm-up, as B-cos LM
        seed=settings.seed,
        checkpoint_every=10**6,
    )


def trained(
    model: nn.Module, name: str, data: SyntheticTexts, settings: Settings, out: Path
) -> tuple[nn.Module, float]:
    """``model`` trained with recipe ``name``; returns it and the training seconds."""
    steps = len(data) // settings.batch_size
    epochs, lr = (
        (settings.original_epochs, settings.lr)
        if name == "standard"
        else (settings.bcos_epochs, settings.bcos_lr)
    )
    started = time.perf_counter()
    result = train(model, data, recipe(name, settings, epochs, lr, steps), out, progress=False)
    return result.model.eval(), time.perf_counter() - started


def explained_batch(test: SyntheticTexts, count: int) -> dict[str, torch.Tensor]:
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


def explanation_row(
    name: str, model: nn.Module, batch: dict[str, torch.Tensor], settings: Settings, pad: int
) -> dict[str, Any]:
    options = {
        "integrated_gradients": {"steps": settings.ig_steps},
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
    return {
        "pointing": bootstrap_interval(pointing),
        "comprehensiveness": bootstrap_interval(erasure.comprehensiveness),
        "sufficiency": bootstrap_interval(erasure.sufficiency),
        "ms": 1000 * seconds,
    }


def run(settings: Settings) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # on a shared machine, fewer threads spin less
    try:
        return _run(settings)
    finally:
        torch.set_num_threads(threads)


def _run(settings: Settings) -> dict[str, Any]:
    data = SyntheticTexts("train", settings.num_train, seed=settings.seed)
    test = SyntheticTexts("test", settings.num_test, seed=settings.seed)
    with tempfile.TemporaryDirectory() as runs:
        root = Path(runs)
        original, original_s = trained(
            original_model(data, settings), "standard", data, settings, root / "original"
        )
        network = original.model  # the transformers model inside the TextClassifier
        bcosified, bcosified_s = trained(network, "bcosify-lm", data, settings, root / "bcosify")
        scratch, scratch_s = trained(
            original_model(data, settings), "bcos-scratch", data, settings, root / "scratch"
        )
    accuracy = {
        "original (standard recipe)": (correct(original, test), original_s),
        "B-cosified (bcosify-lm)": (correct(bcosified, test), bcosified_s),
        "B-cos from scratch (bcos-scratch)": (correct(scratch, test), scratch_s),
    }
    batch = explained_batch(test, settings.explained)
    pad = int(test.tokenizer.pad_token_id)
    # the post-hoc methods on the original (the comparison B-cos LM makes) and, as a control
    # on one model and one kind of probability, on the B-cosified model
    explanations = {("bcos", BCOS): explanation_row("bcos", bcosified, batch, settings, pad)}
    for model_name, model in ((ORIGINAL, original), (BCOS, bcosified)):
        for name in TEXT_EXPLAINER_NAMES[1:]:
            row = explanation_row(name, model, batch, settings, pad)
            explanations[name, model_name] = row
            print(f"  {name} on {model_name}: {row['pointing'].mean:.3f}", file=sys.stderr)
    chance = (batch["evidence"] & batch["candidates"]).sum(1) / batch["candidates"].sum(1)
    return {
        "accuracy": {k: (bootstrap_interval(v.float()), s) for k, (v, s) in accuracy.items()},
        "explanations": explanations,
        "chance": float(chance.mean()),
        "explained": len(batch["ids"]),
    }


def _interval(value: Interval) -> str:
    return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"


def report(results: dict[str, Any], settings: Settings, command: str) -> str:
    accuracy, rows = results["accuracy"], results["explanations"]
    lines = [
        f"Machine: {machine()}; load average {load_average()} at the end. Command: `{command}`. "
        f"Settings: {asdict(settings)}.",
        "",
        f"Accuracy on {settings.num_test} test texts (4 topics, chance 0.25), bootstrap 95% "
        "intervals over texts; B-cosified and from scratch with the same budget "
        f"({settings.bcos_epochs} epochs, lr {settings.bcos_lr:g}):",
        "",
        "| model | top-1 [95%] | training s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {_interval(v)} | {s:.0f} |" for name, (v, s) in accuracy.items()]
    lines += [
        "",
        f"Explanations of the label on {results['explained']} test texts: the B-cosified "
        "model's own (bcos) against post-hoc methods on the original and, as a control, on "
        "the B-cosified model. Pointing game: the top "
        "word is an un-negated keyword of the label's topic (a uniform pick scores "
        f"{results['chance']:.3f}); comprehensiveness: higher is better; sufficiency: lower is "
        "better; each on its own model's probabilities (sigmoid for B-cos, softmax for the "
        "original).",
        "",
        "| explainer | model | pointing game [95%] | comprehensiveness [95%] "
        "| sufficiency [95%] | ms per text |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, model), row in rows.items():
        lines.append(
            f"| {name} | {model} | {_interval(row['pointing'])} | "
            f"{_interval(row['comprehensiveness'])} | {_interval(row['sufficiency'])} | "
            f"{row['ms']:.2f} |"
        )
    original = accuracy["original (standard recipe)"][0].mean
    ours = accuracy["B-cosified (bcosify-lm)"][0].mean
    mine = rows["bcos", BCOS]

    def beats(metric: str, on: str) -> str:
        posthoc = {
            name: row for (name, model), row in rows.items() if model == on and name != "bcos"
        }
        best = max(posthoc, key=lambda k: posthoc[k][metric].mean)
        theirs = posthoc[best][metric]
        if mine[metric].mean <= theirs.mean:
            return f"not met (best: {best}, {theirs.mean:.3f})"
        apart = "intervals apart" if mine[metric].low > theirs.high else "intervals overlap"
        return f"met (best: {best}, {theirs.mean:.3f}; {apart})"

    lines += [
        "",
        "Targets: B-cosified within 2 points of the original's accuracy: "
        f"{'met' if ours >= original - 0.02 else 'not met'} ({ours:.3f} vs {original:.3f}); "
        "pointing game better than every post-hoc method on the original: "
        f"{beats('pointing', ORIGINAL)}; comprehensiveness better than every post-hoc method on "
        f"the original: {beats('comprehensiveness', ORIGINAL)}. Control, post-hoc methods on the "
        f"B-cosified model itself: pointing game {beats('pointing', BCOS)}; comprehensiveness "
        f"{beats('comprehensiveness', BCOS)}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--epochs", type=int, help="epochs of every training run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default 1)")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.epochs:
        settings = replace(settings, original_epochs=args.epochs, bcos_epochs=args.epochs)
    if args.threads:
        settings = replace(settings, threads=args.threads)
    started = time.perf_counter()
    results = run(settings)
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    text = report(results, settings, command_line("bench_text.py", argv))
    title = "## B-cos language models (synthetic text task)"
    return publish(f"{title}\n\n{text}", SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
