"""The image demo's models: the original trained to a plateau (cached between runs) and its
control, the B-cosified model and the B-cos model from scratch, each with its validation curve."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..data import ALL_SHAPES, SyntheticShapes
from ..errors import BcosifyError, UsageError
from ..models import create
from ..models.saving import load_model, save_model
from ..train import TrainResult, get_recipe, train
from .settings import DemoSettings

__all__ = ["Run", "Trainer", "datasets", "train_original", "with_epoch_zero"]

# bump when the way the original is trained or stored changes: older cached originals are unused
_CACHE_FORMAT = 1


def datasets(s: DemoSettings) -> dict[str, SyntheticShapes]:
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
class Run:
    """A finished training run: the model and its validation curve with wall-clock times."""

    model: nn.Module
    curve: dict[str, list[float]]


class Trainer:
    """Trains the demo's models with one set of common settings."""

    def __init__(
        self, s: DemoSettings, data: dict[str, SyntheticShapes], out: Path, progress: bool
    ) -> None:
        self.s, self.data, self.out, self.progress = s, data, out, progress
        self.steps_per_epoch = s.num_train // s.batch_size
        self.lrs = {"standard": s.lr_finetune, "bcosify-cnn": s.lr_finetune}
        self.lrs["bcos-scratch"] = s.lr_scratch
        # from scratch, max pooling trains faster: 37.8% after the default 8 epochs against
        # 25.0% with average pooling (bench_demo, 3 seeds), so the baseline keeps it
        self.maxpools = {"bcosify-cnn": s.maxpool}

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
            maxpool=self.maxpools.get(name, "keep"),
        )

    def fit(
        self, model: nn.Module, recipe: str, name: str, epochs: int, lr: float | None = None
    ) -> Run:
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
        return Run(result.model, _curve(result))


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


def with_epoch_zero(curve: dict[str, list[float]], accuracy: float) -> dict[str, list[float]]:
    """``curve`` with the accuracy before training as epoch 0 (at 0 seconds)."""
    return {
        "epoch": [0, *curve["epoch"]],
        "val_top1": [accuracy, *curve["val_top1"]],
        "seconds": [0.0, *curve["seconds"]],
    }


def train_original(
    s: DemoSettings, trainer: Trainer, cache: Path
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
    control = with_epoch_zero(more.curve, curve["val_top1"][-1])
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
