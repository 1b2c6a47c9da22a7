"""The image demo: the main job, end to end on the built-in synthetic shapes (``bcosify demo``).

Train an ordinary CNN until more training stops paying (the "pretrained" original, cached between
runs; its last, unprofitable, continuation is the control: the original fine-tuned as long as the
B-cosified model), B-cosify and fine-tune it briefly, and train the same B-cos architecture from
scratch. Then measure accuracy, how soon the B-cosified model reaches the
from-scratch model's accuracy, and, for the B-cos models' own explanations and every post-hoc
method on the original, the grid pointing game (2x2 and 3x3), localisation inside the object
masks, deletion AUC and time per image, each as a mean with a bootstrap 95% interval. Writes
``report.html``, ``metrics.json`` and the pictures to ``--out``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..device import load_average
from ..evaluate import correct
from ..serialization import write_text
from ..train import Normalized, prepare_model
from ..train.prepare import input_normalization
from .evaluation import EXPLAINED, POSTHOC, Evaluation, demo_metrics, gradcam_choice
from .report import DemoExamples, write_demo_report
from .settings import DemoSettings
from .training import Trainer, datasets, train_original, with_epoch_zero

__all__ = ["run_demo"]


class _Clock:
    """Seconds since the run started, and the stage banners."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, text: str) -> None:
        print(f"\n== [{self():4.0f} s] {text}", flush=True)


def run_demo(
    settings: DemoSettings, out: Path, *, cache: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the demo with ``settings``, writing everything to ``out``; returns the metrics.

    The trained original is kept in ``cache`` (default ``out / "cache"``) under a key of the
    settings it depends on, and a later run with the same settings loads it instead of training.

    Example:
        >>> import tempfile, pathlib, contextlib, io
        >>> from bcosify.demo import PRESETS
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> with contextlib.redirect_stdout(io.StringIO()):
        ...     metrics = run_demo(PRESETS["test"], out, progress=False)
        >>> (out / "report.html").exists(), sorted(metrics["accuracy"])
        (True, ['B-cos from scratch', 'B-cosified', 'original', 'original fine-tuned'])
    """
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    load_before = load_average()
    s = settings
    clock.stage(f"0/5 rendering the data ({s.num_train + s.num_val + s.num_test} images)")
    data = datasets(s)
    for dataset in data.values():  # into their caches, so that no training run pays for it
        for index in range(len(dataset)):
            dataset.example(index)
    trainer = Trainer(s, data, out, progress)

    clock.stage(
        f"1/5 the original: an ordinary CNN, {s.standard_epochs} epochs, then {s.finetune_epochs} "
        "more until that stops paying (the last time: the control)"
    )
    original, control, original_run = train_original(s, trainer, cache or out / "cache")
    clock.stage(f"2/5 B-cosifying the original and fine-tuning it ({s.finetune_epochs} epochs)")
    converted = prepare_model(copy.deepcopy(original), trainer.recipe("bcosify-cnn", 1))
    before = float(correct(converted.eval(), data["val"], batch_size=s.batch_size).float().mean())
    bcosified = trainer.fit(copy.deepcopy(original), "bcosify-cnn", "bcosified", s.finetune_epochs)
    bcosified.curve = with_epoch_zero(bcosified.curve, before)
    clock.stage(f"3/5 the same B-cos architecture from scratch ({s.scratch_epochs} epochs)")
    scratch = trainer.fit(trainer.architecture(), "bcos-scratch", "scratch", s.scratch_epochs)
    training_seconds = clock()

    clock.stage("4/5 evaluating: accuracy, pointing game, localisation, deletion, time")
    models = {
        "original": Normalized(original.eval(), *input_normalization(original)).eval(),
        "original fine-tuned": Normalized(control.eval(), *input_normalization(original)),
        "B-cosified": bcosified.model.eval(),
        "B-cos from scratch": scratch.model.eval(),
    }
    hits = {
        name: correct(model, data["test"], batch_size=s.batch_size)
        for name, model in models.items()
    }
    top5 = {
        name: float(correct(model, data["test"], batch_size=s.batch_size, k=5).float().mean())
        for name, model in models.items()
    }
    evaluation = Evaluation(s, data["test"])
    # the post-hoc methods explain both the original and the B-cosified model: the B-cos
    # explanation should beat them on its own model too, where they see the same function
    layers = {name: gradcam_choice(models[name], evaluation.images[:1]) for name in EXPLAINED}
    results: dict[str, dict[str, Any]] = {}
    runs = [("B-cosified", "bcos"), ("B-cos from scratch", "bcos")]
    runs += [(model_name, name) for model_name in EXPLAINED for name in POSTHOC]
    # The same weights, channels-last: on a CPU, max pooling and convolution over the grids'
    # batches run faster so (bench_layout: the pointing game's calls 1.24x as fast in all).
    # Copies, so that the speed race below keeps the default layout, in which Integrated
    # Gradients on single images is the faster.
    fast = {
        name: copy.deepcopy(models[name]).to(memory_format=torch.channels_last)
        for name in {name for name, _ in runs}
    }
    for model_name, method in runs:
        label = f"{method} ({model_name})"
        print(f"  {label} ...", end=" ", flush=True)
        started = time.perf_counter()
        extra = {"layer": layers[model_name][0]} if method == "gradcam" else {}
        results[label] = evaluation.run(fast[model_name], model_name, method, extra)
        print(f"{time.perf_counter() - started:.0f} s", flush=True)
    for model_name in EXPLAINED:
        layer, resolution = layers[model_name]
        results[f"gradcam ({model_name})"]["layer"] = {"name": layer, "resolution": resolution}
    colour = {
        name: evaluation.colour(models[name]) for name in ("B-cosified", "B-cos from scratch")
    }
    references = evaluation.reference_runs(models["original"])
    speed = evaluation.speed_race(models["B-cosified"], models["original"])

    clock.stage("5/5 writing the report")
    metrics = demo_metrics(
        s,
        hits,
        top5,
        results,
        colour,
        references,
        speed,
        original_run,
        {
            "original": original_run["curve"],
            "original fine-tuned": original_run["control_curve"],
            "B-cosified": bcosified.curve,
            "B-cos from scratch": scratch.curve,
        },
        training_seconds,
    )
    metrics["total_seconds"] = clock()
    # what else ran: wall-clock times on a busy machine are not an idle machine's
    metrics["machine"] = {
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    metrics["targets"]["under_5_minutes"] = metrics["total_seconds"] < 300
    examples = DemoExamples(
        bcosified.model,
        evaluation.images[: s.gallery],
        evaluation.labels[: s.gallery],
        {k: v[: s.gallery] for k, v in evaluation.attributions.items()},
        data["test"].classes,
    )
    write_demo_report(out, metrics, examples)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
