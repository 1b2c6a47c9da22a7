"""``bcosify demo``: the main job, end to end on the built-in synthetic shapes.

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

import argparse
import copy
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..data import ALL_SHAPES, SyntheticShapes
from ..device import load_average
from ..errors import BcosifyError, EvaluationError, UsageError
from ..evaluate import (
    EXPLAINER_NAMES,
    Interval,
    PointingGameResult,
    bootstrap_interval,
    build_explainer,
    correct,
    deletion_auc,
    gradcam_layer,
    grid_pointing_game,
    mask_localisation,
)
from ..folders import hold_folder
from ..models import create
from ..models.saving import load_model, save_model
from ..report import DemoExamples, write_demo_report
from ..serialization import write_text
from ..train import Normalized, TrainResult, get_recipe, prepare_model, train
from ..train.prepare import input_normalization

__all__ = ["PRESETS", "DemoSettings", "add_parser", "run_demo"]

POSTHOC = tuple(name for name in EXPLAINER_NAMES if name != "bcos")
# bump when the way the original is trained or stored changes: older cached originals are unused
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class DemoSettings:
    """The task, the budgets and the evaluation of a demo run (see :data:`PRESETS`).

    The task: ``classes`` shapes (the first of :data:`bcosify.data.ALL_SHAPES`) at
    ``image_size``, with ``distractors`` distractor objects and ``textured`` objects. The
    original trains ``standard_epochs`` (a cosine schedule), then ``finetune_epochs`` more at
    ``lr_finetune``, as the B-cosified model will, again from each result until that raises the
    validation accuracy by less than ``plateau_gain`` points (at most ``max_cycles`` runs in
    all): the model before the last continuation is the original, the last one the control.
    The pointing game takes ``grids`` grids of each of the ``grid_sizes``, of test images
    classified correctly with a probability above ``confidence``; the sampled post-hoc methods
    run again with larger budgets on the first ``check_grids`` of the smallest grids.
    """

    image_size: int = 32
    classes: int = 10
    distractors: int = 0
    textured: bool = False
    num_train: int = 4000
    num_val: int = 2000
    num_test: int = 1000
    # cheap at full resolution (the grids' cost), wider where the maps are small
    widths: tuple[int, ...] = (8, 16, 32, 64)
    batch_size: int = 64
    standard_epochs: int = 12
    plateau_gain: float = 1.0
    max_cycles: int = 4
    finetune_epochs: int = 5
    scratch_epochs: int = 8
    lr_standard: float = 3e-3
    lr_finetune: float = 3e-3
    lr_scratch: float = 1e-3
    grids: int = 100
    grid_sizes: tuple[int, ...] = (2, 3)
    confidence: float = 0.5
    check_grids: int = 12
    eval_images: int = 64
    gallery: int = 6
    ig_steps: int = 4
    rise_masks: int = 200
    lime_samples: int = 80
    bootstrap: int = 2000
    seed: int = 0


PRESETS = {
    "default": DemoSettings(),
    "full": DemoSettings(
        image_size=64,
        classes=16,
        distractors=2,
        textured=True,
        num_train=16_000,
        widths=(16, 32, 64, 128, 128),
        standard_epochs=20,
        finetune_epochs=8,
        scratch_epochs=24,
        grids=250,
        eval_images=250,
        ig_steps=50,
        rise_masks=1000,
        lime_samples=1000,
    ),
    # a smoke test: seconds, meaningless numbers
    "test": DemoSettings(
        image_size=32,
        classes=10,
        distractors=1,
        num_train=96,
        num_val=32,
        num_test=64,
        widths=(8, 8),
        batch_size=16,
        standard_epochs=1,
        max_cycles=2,
        finetune_epochs=1,
        scratch_epochs=2,
        grids=3,
        grid_sizes=(2,),
        # untrained models are never confident: grids of the correctly classified images
        confidence=0.0,
        eval_images=4,
        gallery=2,
        ig_steps=4,
        rise_masks=16,
        lime_samples=16,
        bootstrap=200,
    ),
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="the whole job on built-in data: train, B-cosify, evaluate, write a report",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder for report.html, metrics.json and the pictures (default: demo-output)",
    )
    parser.add_argument("--full", action="store_true", help="a longer, more accurate run")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="settings preset")
    parser.add_argument(
        "--cache",
        type=Path,
        help="where the trained original is kept between runs (default: OUT/cache)",
    )
    parser.add_argument("--seed", type=int, help="seed of the data, the models and the grids")
    parser.add_argument(
        "--text",
        action="store_true",
        help="the B-cos language model demo instead: a small BERT on the synthetic text task "
        "(presets default and test)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.text:
        return _run_text(args)
    settings = PRESETS[args.preset or ("full" if args.full else "default")]
    if args.seed is not None:
        settings = DemoSettings(**{**asdict(settings), "seed": args.seed})
    with hold_folder(args.out):
        metrics = run_demo(settings, args.out, cache=args.cache, progress=not args.no_progress)
    print(f"\nDone in {metrics['total_seconds']:.0f} s. Open {args.out / 'report.html'}")
    for line in metrics["headline"]:
        print(f"  - {line}")
    return 0


def _run_text(args: argparse.Namespace) -> int:
    """``bcosify demo --text``: :func:`bcosify.cli.demo_text.run_text_demo`."""
    from .demo_text import TEXT_PRESETS, TextDemoSettings, run_text_demo

    if args.full or args.cache is not None:
        raise UsageError("--full and --cache are for the image demo; --text takes --preset")
    preset = args.preset or "default"
    if preset not in TEXT_PRESETS:
        raise UsageError(f"--text takes --preset {' or '.join(TEXT_PRESETS)}, not {preset}")
    settings = TEXT_PRESETS[preset]
    if args.seed is not None:
        settings = TextDemoSettings(**{**asdict(settings), "seed": args.seed})
    with hold_folder(args.out):
        metrics = run_text_demo(settings, args.out, progress=not args.no_progress)
    print(f"\nDone in {metrics['total_seconds']:.0f} s. Open {args.out / 'report.html'}")
    for line in metrics["headline"]:
        print(f"  - {line}")
    return 0


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
    data = _datasets(s)
    for dataset in data.values():  # into their caches, so that no training run pays for it
        for index in range(len(dataset)):
            dataset.example(index)
    trainer = _Trainer(s, data, out, progress)

    clock.stage(
        f"1/5 the original: an ordinary CNN, {s.standard_epochs} epochs, then {s.finetune_epochs} "
        "more until that stops paying (the last time: the control)"
    )
    original, control, original_run = _original(s, trainer, cache or out / "cache")
    clock.stage(f"2/5 B-cosifying the original and fine-tuning it ({s.finetune_epochs} epochs)")
    converted = prepare_model(copy.deepcopy(original), trainer.recipe("bcosify-cnn", 1))
    before = float(correct(converted.eval(), data["val"], batch_size=s.batch_size).float().mean())
    bcosified = trainer.fit(copy.deepcopy(original), "bcosify-cnn", "bcosified", s.finetune_epochs)
    bcosified.curve = _with_epoch_zero(bcosified.curve, before)
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
    evaluation = _Evaluation(s, data["test"])
    layer, resolution = _gradcam_choice(models["original"], evaluation.images[:1])
    results: dict[str, dict[str, Any]] = {}
    for model_name, method in [("B-cosified", "bcos"), ("B-cos from scratch", "bcos")] + [
        ("original", name) for name in POSTHOC
    ]:
        label = f"{method} ({model_name})"
        print(f"  {label} ...", end=" ", flush=True)
        started = time.perf_counter()
        extra = {"layer": layer} if method == "gradcam" else {}
        results[label] = evaluation.run(models[model_name], model_name, method, extra)
        print(f"{time.perf_counter() - started:.0f} s", flush=True)
    results["gradcam (original)"]["layer"] = {"name": layer, "resolution": resolution}
    references = evaluation.reference_runs(models["original"])
    speed = evaluation.speed_race(models["B-cosified"], models["original"])

    clock.stage("5/5 writing the report")
    metrics = _metrics(
        s,
        hits,
        top5,
        results,
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


def _datasets(s: DemoSettings) -> dict[str, SyntheticShapes]:
    if s.max_cycles < 2:
        raise UsageError(
            f"max_cycles must be at least 2 (the original, then a continuation that shows "
            f"whether more training pays); got {s.max_cycles}"
        )
    if not 2 <= s.classes <= len(ALL_SHAPES) - (1 if s.distractors else 0):
        raise UsageError(
            f"the demo has 2 to {len(ALL_SHAPES) - 1} classes (one shape must be left for the "
            f"distractors); got {s.classes}"
        )
    return {
        split: SyntheticShapes(
            n,
            s.image_size,
            seed=s.seed,
            split=split,
            return_mask=True,
            classes=ALL_SHAPES[: s.classes],
            distractors=s.distractors,
            textured=s.textured,
            cache=True,
        )
        for split, n in (("train", s.num_train), ("val", s.num_val), ("test", s.num_test))
    }


@dataclass
class _Run:
    """A finished training run: the model and its validation curve with wall-clock times."""

    model: nn.Module
    curve: dict[str, list[float]]


class _Trainer:
    """Trains the demo's models with one set of common settings."""

    def __init__(
        self, s: DemoSettings, data: dict[str, SyntheticShapes], out: Path, progress: bool
    ) -> None:
        self.s, self.data, self.out, self.progress = s, data, out, progress
        self.steps_per_epoch = s.num_train // s.batch_size
        self.lrs = {"standard": s.lr_finetune, "bcosify-cnn": s.lr_finetune}
        self.lrs["bcos-scratch"] = s.lr_scratch

    def architecture(self) -> nn.Module:
        torch.manual_seed(self.s.seed)
        return create("bcosify:small_cnn", num_classes=self.s.classes, widths=list(self.s.widths))

    def recipe(self, name: str, epochs: int, lr: float | None = None) -> Any:
        return get_recipe(
            name,
            epochs=epochs,
            lr=self.lrs[name] if lr is None else lr,
            batch_size=self.s.batch_size,
            image_size=self.s.image_size,
            seed=self.s.seed,
            checkpoint_every=10**9,
        )

    def fit(
        self, model: nn.Module, recipe: str, name: str, epochs: int, lr: float | None = None
    ) -> _Run:
        run_dir = self.out / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh run: an old checkpoint would be resumed
        result = train(
            model,
            self.data["train"],
            self.recipe(recipe, epochs, lr),
            run_dir,
            val_data=self.data["val"],
            progress=self.progress,
            resume=False,
            log_every=self.steps_per_epoch,
        )
        if not result.finished:
            raise BcosifyError(f"training the {name} model stopped before the end")
        return _Run(result.model, _curve(result))


def _curve(result: TrainResult) -> dict[str, list[float]]:
    """Validation accuracy after each epoch and the seconds of training until then.

    The seconds come from the run's metrics log, whose step records (one an epoch) carry the
    time since the run started; validation runs after each record, so its time counts towards
    the next epoch.
    """
    if result.run_dir is None:
        raise BcosifyError("a finished training run has no run folder to read its times from")
    times = {}
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time" in record:
            times[record["step"]] = record["time"]
    return {
        "epoch": [h["epoch"] for h in result.history],
        "val_top1": [h["val_top1"] for h in result.history],
        "seconds": [times.get(h["step"], float("nan")) for h in result.history],
    }


def _with_epoch_zero(curve: dict[str, list[float]], accuracy: float) -> dict[str, list[float]]:
    """``curve`` with the accuracy before training as epoch 0 (at 0 seconds)."""
    return {
        "epoch": [0, *curve["epoch"]],
        "val_top1": [accuracy, *curve["val_top1"]],
        "seconds": [0.0, *curve["seconds"]],
    }


def _original(
    s: DemoSettings, trainer: _Trainer, cache: Path
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The original trained to a plateau and the control, from the cache when it holds them."""
    key = _cache_key(s)
    folder = cache / f"original-{key}"
    try:
        run = json.loads((folder / "run.json").read_text())
        original, control = load_model(folder / "original"), load_model(folder / "control")
        print(f"  from the cache: {folder} (trained in {run['seconds']:.0f} s)", flush=True)
        return original, control, {**run, "cached": True}
    except (OSError, ValueError, KeyError, BcosifyError):
        pass  # not there (or unreadable): train them, and replace what is there
    first = trainer.fit(
        trainer.architecture(), "standard", "original-1", s.standard_epochs, s.lr_standard
    )
    original, curve = first.model, first.curve
    gains: list[float] = []
    for cycle in range(2, s.max_cycles + 1):
        more = trainer.fit(
            copy.deepcopy(original), "standard", f"original-{cycle}", s.finetune_epochs
        )
        gains.append(100 * (more.curve["val_top1"][-1] - curve["val_top1"][-1]))
        print(f"  {s.finetune_epochs} more epochs: {gains[-1]:+.1f} points", flush=True)
        if gains[-1] < s.plateau_gain or cycle == s.max_cycles:
            break
        original, curve = more.model, _joined(curve, more.curve)
    control = _with_epoch_zero(more.curve, curve["val_top1"][-1])
    run = {
        "key": key,
        "cycles": 1 + len(gains),
        "cycle_gains": gains,
        "plateau_reached": gains[-1] < s.plateau_gain,
        "curve": curve,
        "control_curve": control,
        "seconds": curve["seconds"][-1] + more.curve["seconds"][-1],
    }
    _store(folder, {"original": original, "control": more.model}, run)
    return original, more.model, {**run, "cached": False}


def _joined(first: dict[str, list[float]], then: dict[str, list[float]]) -> dict[str, list[float]]:
    """Two validation curves one after the other: epochs and seconds continue."""
    epochs, seconds = first["epoch"][-1], first["seconds"][-1]
    return {
        "epoch": first["epoch"] + [epochs + e for e in then["epoch"]],
        "val_top1": first["val_top1"] + then["val_top1"],
        "seconds": first["seconds"] + [seconds + t for t in then["seconds"]],
    }


def _cache_key(s: DemoSettings) -> str:
    """A digest of everything the trained original depends on."""
    relevant = {
        name: getattr(s, name)
        for name in (
            "image_size",
            "classes",
            "distractors",
            "textured",
            "num_train",
            "num_val",
            "widths",
            "batch_size",
            "standard_epochs",
            "finetune_epochs",
            "plateau_gain",
            "max_cycles",
            "lr_standard",
            "lr_finetune",
            "seed",
        )
    }
    stamp = {
        "settings": relevant,
        "format": _CACHE_FORMAT,
        "bcosify": __version__,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _store(folder: Path, models: dict[str, nn.Module], run: dict[str, Any]) -> None:
    """Write the cache entry beside ``folder`` and move it into place, so it is whole or absent."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, model in models.items():
            save_model(model, staging / name)
        (staging / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _gradcam_choice(model: nn.Module, example: Tensor) -> tuple[str, int]:
    """GradCAM's layer on a single image (the deepest convolution with >= 7 x 7 outputs), and
    its output side; the grids use the same layer, so every cell gets the same resolution."""
    name, layer = gradcam_layer(model, example)
    sizes: list[int] = []
    handle = layer.register_forward_hook(lambda m, a, output: sizes.append(output.shape[-1]))
    try:
        with torch.no_grad():
            model(example)
    finally:
        handle.remove()
    return name, sizes[0]


class _Evaluation:
    """Runs every metric of one explanation method on one model; keeps the attributions."""

    def __init__(self, s: DemoSettings, test: SyntheticShapes) -> None:
        self.s, self.test = s, test
        items = [test[i] for i in range(min(s.eval_images, len(test)))]
        self.images = torch.stack([item[0] for item in items])
        self.labels = torch.tensor([item[1] for item in items])
        self.masks = torch.stack([item[2] for item in items])
        self.attributions: dict[str, Tensor] = {}
        self.games: dict[str, PointingGameResult] = {}

    def options(self, method: str, n: int) -> dict[str, Any]:
        """The explainer's options on images of ``n x n`` cells (``n`` 1: single images).

        Perturbation methods work at the same resolution per cell on both grids (their cost
        grows with the number of cells they perturb): occlusion windows of half a cell, moved
        by their width; LIME squares a third of a cell; on single images occlusion's library
        default (an eighth of the image, moved by half that) and LIME squares of a quarter.
        RISE is centred (the mean probability subtracted), or the constant part of its map
        would spread its positive mass evenly over every cell. Forward passes take as many
        images as :meth:`per_pass` allows.
        """
        s, cell, per_pass = self.s, self.s.image_size, self.per_pass(n)
        if method == "integrated_gradients":
            return {"n_steps": s.ig_steps, "internal_batch_size": per_pass}
        if method == "rise":
            return {
                "n_masks": s.rise_masks,
                "seed": s.seed,
                "centred": True,
                "batch_size": per_pass,
            }
        if method == "lime":
            patches = 3 * n if n > 1 else 4
            return {
                "n_samples": s.lime_samples,
                "seed": s.seed,
                "patches": patches,
                "batch_size": per_pass,
            }
        if method == "occlusion":
            # every distinct image of a call is occluded in the same forward pass
            images = max(1, per_pass // (n * n)) if n > 1 else len(self.images)
            window = {"window": max(1, cell // 2), "stride": max(1, cell // 2)} if n > 1 else {}
            return {**window, "perturbations_per_eval": max(1, per_pass // images)}
        return {}

    def per_pass(self, n: int) -> int:
        """Images of ``n x n`` cells per forward pass: about 2^18 pixels (on a CPU, a batch of
        small images that no longer fits the caches takes up to twice as long per image), and
        at least one grid."""
        side = n * self.s.image_size
        return max(n * n, 2**18 // (side * side))

    def run(
        self, model: nn.Module, model_name: str, method: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        s = self.s
        games: dict[str, Any] = {}
        for n in s.grid_sizes:
            explainer = build_explainer(method, model, **self.options(method, n), **extra)
            try:
                game = self._pointing(model, explainer, n, s.grids)
            except EvaluationError as error:  # too few confidently classified images
                games[f"{n}x{n}"] = {"error": str(error)}
                continue
            self.games[f"{method} ({model_name}) {n}x{n}"] = game
            games[f"{n}x{n}"] = {
                **game.interval(resamples=s.bootstrap, seed=s.seed).to_dict(),
                "quartiles": list(game.quartiles),
            }
        explainer = build_explainer(method, model, **self.options(method, 1), **extra)
        attribution, per_image = _timed(explainer, self.images, self.labels)
        self.attributions[f"{method} ({model_name})"] = attribution
        inside = mask_localisation(attribution, self.masks)
        deletion = deletion_auc(model, self.images, self.labels, attribution)
        return {
            "model": model_name,
            "method": method,
            "options": {str(n): self.options(method, n) for n in (1, *s.grid_sizes)},
            "pointing_game": games,
            "mask_localisation": self._interval(inside).to_dict(),
            "deletion_auc": self._interval(deletion).to_dict(),
            "seconds_per_image": per_image,
        }

    def _pointing(self, model: nn.Module, explainer: Any, n: int, grids: int) -> PointingGameResult:
        s = self.s
        return grid_pointing_game(
            model,
            explainer,
            self.test,
            n=n,
            num_grids=grids,
            threshold=s.confidence,
            seed=s.seed,
            batch_size=self.per_pass(n),
        )

    def _interval(self, values: Tensor) -> Interval:
        return bootstrap_interval(values, resamples=self.s.bootstrap, seed=self.s.seed)

    def reference_runs(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """The sampled methods with their published budgets (or four times the demo's) on the
        first ``check_grids`` grids of the smallest size: whether the demo's smaller budgets
        change their pointing game."""
        s = self.s
        n = min(s.grid_sizes)
        grids = min(s.check_grids, s.grids)
        references = {
            "integrated_gradients": {"n_steps": 50},
            "rise": {"n_masks": max(4 * s.rise_masks, 400)},
            "lime": {"n_samples": max(4 * s.lime_samples, 400)},
        }
        checks: dict[str, dict[str, Any]] = {}
        for method, budget in references.items():
            check: dict[str, Any] = {"options": budget, "grid": f"{n}x{n}", "grids": grids}
            ours = self.games.get(f"{method} (original) {n}x{n}")
            if ours is not None:
                explainer = build_explainer(method, model, **{**self.options(method, n), **budget})
                theirs = self._pointing(model, explainer, n, grids)
                check["pointing_game"] = float(theirs.per_grid.mean())
                check["pointing_game_demo_budget"] = float(ours.per_grid[:grids].mean())
            checks[method] = check
        return checks

    def speed_race(self, bcos: nn.Module, original: nn.Module, rounds: int = 5) -> dict[str, Any]:
        """The B-cosified model's explanation against Integrated Gradients at its published 50
        steps on the original, timed in turns on the single images (so that a change in what
        else the machine runs slows both): the median seconds per image of each."""
        racers = {
            "bcos": build_explainer("bcos", bcos),
            "integrated_gradients": build_explainer("integrated_gradients", original, n_steps=50),
        }
        times: dict[str, list[float]] = {name: [] for name in racers}
        for explainer in racers.values():
            explainer.attribute(self.images[:4], self.labels[:4])  # warm-up
        for _ in range(rounds):
            for name, explainer in racers.items():
                tic = time.perf_counter()
                explainer.attribute(self.images, self.labels)
                times[name].append((time.perf_counter() - tic) / len(self.images))
        seconds = {name: statistics.median(values) for name, values in times.items()}
        return {
            "ig_steps": 50,
            "rounds": rounds,
            "seconds_per_image": seconds,
            "ratio": seconds["integrated_gradients"] / seconds["bcos"],
        }


def _timed(
    explainer: Any, images: Tensor, labels: Tensor, *, budget: float = 1.0, most: int = 5
) -> tuple[Tensor, float]:
    """The attributions and the seconds per image: the median of repeated calls.

    A warm-up call first (set-up is not steady state), then up to ``most`` calls while they
    take less than ``budget`` seconds in all: one call of a fast method is too short to time on
    a shared machine, and a slow one is long enough alone.
    """
    explainer.attribute(images[:4], labels[:4])
    times: list[float] = []
    while len(times) < most and sum(times) < budget:
        tic = time.perf_counter()
        attribution = explainer.attribute(images, labels)
        times.append(time.perf_counter() - tic)
    return attribution, statistics.median(times) / len(images)


def _metrics(
    s: DemoSettings,
    hits: dict[str, Tensor],
    top5: dict[str, float],
    results: dict[str, dict[str, Any]],
    references: dict[str, dict[str, Any]],
    speed: dict[str, Any],
    original_run: dict[str, Any],
    curves: dict[str, Any],
    training_seconds: float,
) -> dict[str, Any]:
    """Everything measured, the targets judged on it, and the headline."""

    def interval(values: Tensor) -> dict[str, Any]:
        return bootstrap_interval(values.float(), resamples=s.bootstrap, seed=s.seed).to_dict()

    accuracy = {name: {"top1": interval(h), "top5": top5[name]} for name, h in hits.items()}
    # paired: the same test images, so the difference has its own, narrower, interval
    gap = {
        name: interval(hits[name].float() - hits["original"].float())
        for name in hits
        if name != "original"
    }
    cost = _cost(curves["B-cosified"], curves["B-cos from scratch"])
    own = results["bcos (B-cosified)"]
    scratch = results["bcos (B-cos from scratch)"]
    posthoc = {k: v for k, v in results.items() if v["method"] != "bcos"}
    # a target is None when this run could not measure it
    targets: dict[str, bool | None] = {
        "bcosified_within_1_point_of_the_original": 100 * gap["B-cosified"]["mean"] >= -1.0
    }
    for grid in (f"{n}x{n}" for n in s.grid_sizes):
        mine = _game(own, grid)
        others = [_game(v, grid) for v in posthoc.values()]
        measured = [other for other in others if other is not None]
        targets[f"bcos_pointing_game_{grid}_interval_above_every_posthoc"] = (
            None if mine is None or not measured else all(mine.above(o) for o in measured)
        )
        theirs = _game(scratch, grid)
        targets[f"bcosified_pointing_game_{grid}_not_below_scratch"] = (
            None if mine is None or theirs is None else not mine.below(theirs)
        )
    targets["bcos_20x_faster_than_integrated_gradients_50_steps"] = speed["ratio"] >= 20
    best = {grid: _best_posthoc(posthoc, grid) for grid in (f"{n}x{n}" for n in s.grid_sizes)}
    headline = [
        f"Accuracy (test): original {_percent(accuracy['original']['top1'])}, B-cosified "
        f"{_percent(accuracy['B-cosified']['top1'])} ({100 * gap['B-cosified']['mean']:+.1f} "
        f"points), the original fine-tuned as long "
        f"{_percent(accuracy['original fine-tuned']['top1'])}, "
        f"B-cos from scratch {_percent(accuracy['B-cos from scratch']['top1'])} after "
        f"{s.scratch_epochs} epochs.",
        _cost_sentence(cost, s),
    ]
    for grid, (name, value) in best.items():
        mine = _game(own, grid)
        headline.append(
            f"Grid pointing game {grid}: the B-cosified model's own explanations "
            f"{_interval_text(mine)}; the best post-hoc method on the original ({name}) "
            f"{_interval_text(value)}; uniform {1 / int(grid[0]) ** 2:.2f}."
        )
    race = speed["seconds_per_image"]
    headline.append(
        f"Explanation time per image (timed in turns): B-cos {1000 * race['bcos']:.2f} ms, "
        f"Integrated Gradients (50 steps) {1000 * race['integrated_gradients']:.1f} ms "
        f"({speed['ratio']:.0f}x slower)."
    )
    caveats = _caveats(own, references)
    return {
        "settings": asdict(s),
        "accuracy": accuracy,
        "accuracy_gap_to_original": gap,
        "original_training": {
            k: v for k, v in original_run.items() if k not in ("curve", "control_curve")
        },
        "cost": cost,
        "explanations": results,
        "references": references,
        "speed": speed,
        "training_curves": curves,
        "training_seconds": training_seconds,
        "targets": targets,
        "caveats": caveats,
        "headline": headline + caveats,
    }


def _caveats(own: dict[str, Any], references: dict[str, dict[str, Any]]) -> list[str]:
    """Where a post-hoc method with a larger budget reaches into the B-cosified model's interval
    (or above it): the pointing-game targets then hold for the demo's budgets only."""
    lines = []
    for method, check in references.items():
        mine = _game(own, check["grid"])
        if mine is None or "pointing_game" not in check or check["pointing_game"] < mine.low:
            continue
        budget = ", ".join(f"{k}={v}" for k, v in check["options"].items())
        lines.append(
            f"Caveat: {method} with {budget} scores {check['pointing_game']:.3f} on the first "
            f"{check['grids']} {check['grid']} grids ({check['pointing_game_demo_budget']:.3f} "
            f"with the demo's budget), as high as the B-cosified model's interval "
            f"{_interval_text(mine)}: against it at that budget the {check['grid']} target "
            "would not be shown."
        )
    return lines


def _game(result: dict[str, Any], grid: str) -> Interval | None:
    game = result["pointing_game"].get(grid, {})
    if "error" in game or not game:
        return None
    return Interval(**{k: game[k] for k in ("mean", "low", "high", "level", "count")})


def _best_posthoc(posthoc: dict[str, dict[str, Any]], grid: str) -> tuple[str, Interval | None]:
    scored = [(v["method"], _game(v, grid)) for v in posthoc.values()]
    scored = [(name, value) for name, value in scored if value is not None]
    if not scored:
        return "none", None
    return max(scored, key=lambda item: item[1].mean)


def _cost(bcos: dict[str, list[float]], scratch: dict[str, list[float]]) -> dict[str, Any]:
    """When the B-cosified model first reaches the from-scratch model's final validation
    accuracy, in epochs and seconds of fine-tuning, and the accuracies after equal budgets."""
    goal = scratch["val_top1"][-1]
    reached = next((i for i, a in enumerate(bcos["val_top1"]) if a >= goal), None)
    common = min(bcos["epoch"][-1], scratch["epoch"][-1])
    at = {
        name: dict(zip(c["epoch"], c["val_top1"], strict=True))
        for name, c in (("B-cosified", bcos), ("B-cos from scratch", scratch))
    }
    result: dict[str, Any] = {
        "scratch_final_val": goal,
        "scratch_epochs": scratch["epoch"][-1],
        "scratch_seconds": scratch["seconds"][-1],
        "same_budget_epochs": common,
        "same_budget_val": {name: values.get(common) for name, values in at.items()},
        "reached_at_epoch": None,
        "reached_after_seconds": None,
        "epoch_speedup": None,
        "time_speedup": None,
    }
    if reached is not None:
        epoch, seconds = bcos["epoch"][reached], bcos["seconds"][reached]
        result.update(reached_at_epoch=epoch, reached_after_seconds=seconds)
        if epoch > 0:
            result["epoch_speedup"] = scratch["epoch"][-1] / epoch
            result["time_speedup"] = scratch["seconds"][-1] / seconds
    return result


def _cost_sentence(cost: dict[str, Any], s: DemoSettings) -> str:
    goal = f"{cost['scratch_final_val']:.1%}"
    if cost["reached_at_epoch"] is None:
        return (
            f"The B-cosified model did not reach the from-scratch model's final validation "
            f"accuracy ({goal} after {cost['scratch_epochs']} epochs) in its "
            f"{s.finetune_epochs} epochs."
        )
    if cost["reached_at_epoch"] == 0:
        return (
            f"The B-cosified model is at the from-scratch model's final validation accuracy "
            f"({goal} after {cost['scratch_epochs']} epochs) before any fine-tuning."
        )
    return (
        f"The B-cosified model reaches the from-scratch model's final validation accuracy "
        f"({goal} after {cost['scratch_epochs']} epochs, {cost['scratch_seconds']:.0f} s) after "
        f"{cost['reached_at_epoch']} epoch(s), {cost['reached_after_seconds']:.0f} s: "
        f"{cost['epoch_speedup']:.1f}x fewer epochs, {cost['time_speedup']:.1f}x less time "
        "(the paper: 4.7x to 9x)."
    )


def _percent(value: dict[str, Any]) -> str:
    return f"{value['mean']:.1%} [{value['low']:.1%}, {value['high']:.1%}]"


def _interval_text(value: Interval | None) -> str:
    return "n/a (too few confident images)" if value is None else str(value)
