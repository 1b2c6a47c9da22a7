"""Resuming a run from its checkpoint: what must match, what may change, what must be finite.

A run resumes only with the recipe, the data and the architecture it started with, so that
the resumed run computes what an uninterrupted one would. The exceptions are the fields in
:data:`RESUMABLE_CHANGES`: the learning rate and its schedule (to get past a divergence from the
last finite checkpoint), gradient clipping, and fields without effect on the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import CheckpointError
from ..serialization import load_state_dict_strictly, non_finite_entries
from .checkpoint import CHECKPOINT_FILE, load_checkpoint
from .optim import ExponentialMovingAverage
from .recipes import Recipe

__all__ = ["RESUMABLE_CHANGES", "data_fingerprint", "resume_from_checkpoint"]

# recipe fields that may change when a run is resumed; the others must not
RESUMABLE_CHANGES = (
    "lr",
    "warmup_steps",
    "schedule",
    "agc_clip",
    "num_workers",
    "checkpoint_every",
    "checkpoint_minutes",
    "time_budget",
)


def data_fingerprint(train_data: Dataset, val_data: Dataset | None) -> dict[str, Any]:
    """What identifies a run's data: the sizes, the class list and the data's own seed.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4))
        >>> data_fingerprint(data, None)
        {'train_examples': 4, 'val_examples': None, 'classes': None, 'data_seed': None}
    """
    classes = getattr(train_data, "classes", None)
    seed = getattr(train_data, "seed", None)
    return {
        "train_examples": len(train_data),  # type: ignore[arg-type]
        "val_examples": None if val_data is None else len(val_data),  # type: ignore[arg-type]
        "classes": None if classes is None else [str(c) for c in classes],
        "data_seed": seed if isinstance(seed, int) else None,
    }


def resume_from_checkpoint(
    out: Path,
    recipe: Recipe,
    fingerprint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ExponentialMovingAverage | None,
    scaler: torch.amp.GradScaler | None,
) -> tuple[int, dict[str, tuple[Any, Any]], float]:
    """Load the checkpoint in ``out`` into the model, optimiser, EMA and scaler, if there is
    one; return the step it holds (0 without one), the recipe fields changed since, as
    ``{field: (before, now)}``, and the seconds of training it records (0 without one). A
    checkpoint of another recipe, other data or another architecture, or with non-finite
    values, is a :class:`CheckpointError`."""
    if not (out / CHECKPOINT_FILE).is_file():
        return 0, {}, 0.0
    state = load_checkpoint(out)
    try:
        saved = Recipe.from_dict(state["recipe"]).to_dict()
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"the checkpoint in {str(out)!r} holds no valid recipe ({error}): delete "
            f"{CHECKPOINT_FILE} to start over, or choose another --out"
        ) from None
    now = recipe.to_dict()
    differ = sorted(k for k, v in saved.items() if now[k] != v)
    fixed = [k for k in differ if k not in RESUMABLE_CHANGES]
    if fixed:
        changes = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in fixed)
        raise CheckpointError(
            f"{str(out)!r} holds a run with a different recipe ({changes}); resume it with the "
            f"same recipe (only {', '.join(RESUMABLE_CHANGES)} may change), or choose another "
            "--out"
        )
    before = state.get("data")
    if before is not None and before != fingerprint:
        changes = ", ".join(
            f"{k} {before.get(k)!r} -> {v!r}" for k, v in fingerprint.items() if before.get(k) != v
        )
        raise CheckpointError(
            f"{str(out)!r} holds a run on other data ({changes}); resume it with the data it "
            "started with (the same --data, --num-train, --num-val), or choose another --out"
        )
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(
            f"the checkpoint in {str(out)!r} holds non-finite values ({', '.join(bad[:5])}); it "
            f"cannot be resumed: delete {CHECKPOINT_FILE} to start over, or choose another --out"
        )
    load_state_dict_strictly(
        model, state["model"], f"the checkpoint in {str(out)!r}", CheckpointError
    )
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise CheckpointError(
            f"the optimizer state in {str(out)!r} does not fit: {error}"
        ) from None
    if ema and state.get("ema"):
        current = model.state_dict()
        ema.state = {k: v.to(current[k].device) for k, v in state["ema"].items()}
    if scaler and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    changes = {k: (saved[k], now[k]) for k in differ}
    return int(state["step"]), changes, float(state.get("elapsed") or 0.0)
