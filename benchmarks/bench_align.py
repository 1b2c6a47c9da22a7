"""Beyond the paper, measured: calibration after conversion, and B-cosification without labels.

Run it as::

    .venv/bin/python benchmarks/bench_align.py --write docs/benchmarks.md

On the synthetic shapes (``bcosify.data.SyntheticShapes``, 10 classes, with object masks):

1. Teacher: the built-in small CNN (``bcosify:small_cnn``, batch norms) trained with the
   ``standard`` recipe.
2. Calibration: the teacher converted with the defaults (B = 2), evaluated in evaluation mode
   right after conversion: as converted, after ``bcosify.calibrate`` with ``method="norms"``
   (batch-norm statistics re-estimated) and with ``method="lsuv"`` (unit output RMS per layer),
   on images of the training split (no labels).
3. B-cosification with the same budget, from the same converted model: fine-tuning with labels
   (recipe ``bcosify-cnn``) against alignment to the frozen teacher without labels (recipe
   ``bcosify-aloe``: features at three depths and the logits). After every epoch: top-1 on
   the test split (runs are resumed epoch by epoch, which is exact). At the end: a linear probe
   of the penultimate features (``bcosify.evaluate.linear_probe``, the teacher's too), the 2x2
   grid pointing game of the model's own explanations and the share of positive contribution
   inside the object masks, with bootstrap 95% intervals (over whole grids, and images).
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
from bench_clip import Rendered  # pre-rendered shapes with masks, shared
from common import command_line, load_average, machine, publish
from torch import nn

import bcosify
from bcosify.data import SyntheticShapes
from bcosify.errors import EvaluationError
from bcosify.evaluate import (
    Interval,
    accuracy,
    bootstrap_interval,
    build_explainer,
    grid_pointing_game,
    linear_probe,
    mask_localisation,
)
from bcosify.models import create
from bcosify.train import Normalized, align, get_recipe, train

SECTION = "bench_align"


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of a run."""

    image_size: int = 64
    num_train: int = 5000
    num_test: int = 1000
    teacher_epochs: int = 8
    student_epochs: int = 5
    calibration_images: int = 256
    grids: int = 100
    threshold: float = 0.5  # the pointing game's confidence threshold
    explained: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


QUICK = Settings(
    image_size=32,
    num_train=128,
    num_test=64,
    teacher_epochs=1,
    student_epochs=1,
    calibration_images=32,
    grids=4,
    threshold=0.0,
    explained=16,
    batch_size=32,
)


def train_teacher(data: Rendered, test: Rendered, settings: Settings, out: Path) -> nn.Module:
    recipe = get_recipe(
        "standard",
        epochs=settings.teacher_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        image_size=settings.image_size,
        seed=settings.seed,
        checkpoint_every=10**6,
    )
    torch.manual_seed(settings.seed)
    model = create("bcosify:small_cnn", num_classes=len(data.classes))
    return train(model, data, recipe, out, val_data=test, progress=False).model.eval()


def student_recipe(name: str, settings: Settings, epochs: int):
    return get_recipe(
        name,
        epochs=epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        image_size=settings.image_size,
        weight_decay=0.0,
        seed=settings.seed,
        checkpoint_every=10**6,
    )


def epoch_by_epoch(
    kind: str, teacher: nn.Module, data: Rendered, test: Rendered, settings: Settings, out: Path
) -> tuple[nn.Module, list[float], float]:
    """Train ``kind`` ("labels" or "alignment") for the budget, resuming after every epoch
    to measure the test accuracy (resumption is exact); returns the model, the accuracies and
    the training seconds."""
    steps = len(data) // settings.batch_size
    accuracies, seconds, model = [], 0.0, None
    for epoch in range(1, settings.student_epochs + 1):
        started = time.perf_counter()
        if kind == "labels":
            recipe = student_recipe("bcosify-cnn", settings, settings.student_epochs)
            result = train(
                teacher, data, recipe, out, max_steps=steps * epoch, progress=False
            )  # fmt: skip
            model = result.model
        else:
            recipe = student_recipe("bcosify-aloe", settings, settings.student_epochs)
            result = align(
                teacher, data, out, recipe=recipe, max_steps=steps * epoch, progress=False
            ).train
            model = result.model
        seconds += time.perf_counter() - started
        accuracies.append(accuracy(model.eval(), test)["top1"])
        print(f"  {kind} epoch {epoch}: {accuracies[-1]:.3f}", file=sys.stderr)
    return model, accuracies, seconds


def localisation(model: nn.Module, test: Rendered, settings: Settings) -> dict[str, Any]:
    """The pointing game (None when too few images are classified right to build grids) and
    the share inside the masks, with intervals."""
    explainer = build_explainer("bcos", model)
    index = torch.arange(min(settings.explained, len(test)))
    images, labels = test.batch(index), test.labels[index]
    inside = bootstrap_interval(
        mask_localisation(explainer.attribute(images, labels), test.masks[index])
    )
    try:
        game = grid_pointing_game(
            model,
            explainer,
            test,
            n=2,
            num_grids=settings.grids,
            threshold=settings.threshold,
            seed=settings.seed,
        )
    except EvaluationError as error:
        print(f"  no pointing game: {error}", file=sys.stderr)
        return {"pointing": None, "inside": inside}
    # the cells of a grid belong together: the bootstrap resamples whole grids
    return {"pointing": bootstrap_interval(game.scores.mean(1)), "inside": inside}


def run(settings: Settings) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    data, test = (
        Rendered(SyntheticShapes(n, settings.image_size, seed=settings.seed, split=split))
        for split, n in (("train", settings.num_train), ("test", settings.num_test))
    )
    with tempfile.TemporaryDirectory() as runs:
        root = Path(runs)
        started = time.perf_counter()
        teacher = train_teacher(data, test, settings, root / "teacher")
        teacher_seconds = time.perf_counter() - started
        info = teacher.bcosify_source
        as_input = Normalized(teacher, info.input_mean, info.input_std).eval()
        teacher_top1 = accuracy(as_input, test)["top1"]
        calibration = data.batch(torch.arange(min(len(data), settings.calibration_images)))
        converted = {}
        for method in ("none", "norms", "lsuv"):
            model, _ = bcosify.convert(teacher)
            if method != "none":
                bcosify.calibrate(model, calibration, method=method)
            converted[method] = accuracy(model.eval(), test)["top1"]
        students = {
            kind: epoch_by_epoch(kind, teacher, data, test, settings, root / kind)
            for kind in ("labels", "alignment")
        }
    probe_train = torch.utils.data.Subset(data, range(min(len(data), 2000)))
    rows = {
        "teacher": {
            "top1": teacher_top1,
            "probe": linear_probe(as_input, probe_train, test).top1,
            "seconds": teacher_seconds,
        }
    }
    for kind, (model, accuracies, seconds) in students.items():
        within = [e + 1 for e, a in enumerate(accuracies) if a >= teacher_top1 - 0.01]
        rows[kind] = {
            "top1": accuracies[-1],
            "accuracies": accuracies,
            "probe": linear_probe(model, probe_train, test).top1,
            "epochs_to_teacher": within[0] if within else None,
            "seconds": seconds,
            **localisation(model, test, settings),
        }
    return {"converted": converted, "rows": rows}


def _interval(value: Interval | None) -> str:
    if value is None:
        return "n/a (too few images classified right)"
    return f"{value.mean:.3f} [{value.low:.3f}, {value.high:.3f}]"


def report(results: dict[str, Any], settings: Settings, command: str) -> str:
    converted, rows = results["converted"], results["rows"]
    teacher = rows["teacher"]
    lines = [
        f"Machine: {machine()}; load average {load_average()} at the end. Command: "
        f"`{command}`. Settings: {asdict(settings)}.",
        "",
        f"Teacher (small CNN, standard recipe, {settings.teacher_epochs} epochs): top-1 "
        f"{teacher['top1']:.3f}, linear probe {teacher['probe']:.3f}.",
        "",
        f"Converted (B = 2, defaults), evaluation mode, before any training (chance {1 / 10:.2f}):",
        "",
        "| calibration | top-1 |",
        "|---|---:|",
        *(f"| {method} | {top1:.3f} |" for method, top1 in converted.items()),
        "",
        f"B-cosified with the same budget ({settings.student_epochs} epochs, lr {settings.lr}):",
        "",
        "| student | top-1 per epoch | linear probe | 2x2 pointing game [95%] | inside mask "
        "[95%] | epochs to the teacher's top-1 (-1 point) | training s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    names = {"labels": "fine-tuned with labels (bcosify-cnn)", "alignment": "aligned, no labels"}
    for kind, name in names.items():
        row = rows[kind]
        epochs = row["epochs_to_teacher"] or f"not in {settings.student_epochs}"
        lines.append(
            f"| {name} | {' '.join(f'{a:.3f}' for a in row['accuracies'])} | "
            f"{row['probe']:.3f} | {_interval(row['pointing'])} | {_interval(row['inside'])} | "
            f"{epochs} | {row['seconds']:.0f} |"
        )
    aligned, labelled = rows["alignment"], rows["labels"]
    lines += [
        "",
        "Targets: calibrated model above chance by a wide margin before any training: "
        f"{'met' if max(converted['norms'], converted['lsuv']) > 0.3 else 'not met'}; aligned "
        "student within 1 point of the teacher's linear probe: "
        f"{'met' if aligned['probe'] >= teacher['probe'] - 0.01 else 'not met'}; its pointing "
        "game above the label-fine-tuned student's (intervals): "
        f"{_above(aligned['pointing'], labelled['pointing'])}.",
    ]
    return "\n".join(lines)


def _above(a: Interval | None, b: Interval | None) -> str:
    if a is None or b is None:
        return "not measured"
    return "met" if a.above(b) else "not met"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--epochs", type=int, help="student epochs")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.epochs:
        settings = replace(settings, student_epochs=args.epochs)
    started = time.perf_counter()
    results = run(settings)
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    text = report(results, settings, command_line("bench_align.py", argv))
    title = "## Calibration and label-free B-cosification (alignment)"
    return publish(f"{title}\n\n{text}", SECTION, args.write if not args.quick else None)


if __name__ == "__main__":
    raise SystemExit(main())
