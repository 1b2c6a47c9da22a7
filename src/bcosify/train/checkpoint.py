"""Training checkpoints: one safetensors file, written atomically, read without pickles.

A checkpoint holds the model weights, the optimiser state, the EMA weights and the loop's
position. Nested state (an optimiser's ``state_dict``) is split into its tensors, stored as
safetensors, and a JSON skeleton of everything else, stored in the file's metadata. The file is
written under a temporary name and renamed, so a process killed mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import CheckpointError
from ..serialization import atomic_write

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.safetensors"
_FORMAT = "bcosify-checkpoint/1"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts, lists, tuples, numbers, strings, tensors) atomically.

    Example:
        >>> import tempfile, torch
        >>> path = save_checkpoint(tempfile.mkdtemp(), {"step": 3, "w": torch.ones(2)})
        >>> load_checkpoint(path.parent)["step"]
        3
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    skeleton = _split(state, tensors, "")
    metadata = {"format": _FORMAT, "skeleton": json.dumps(skeleton)}
    target = directory / CHECKPOINT_FILE
    atomic_write(target, lambda path: save_file(tensors, str(path), metadata=metadata))
    return target


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read the state written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"could not read the checkpoint {str(path)!r}: {error}") from None
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a bcosify training checkpoint")
    try:
        return _join(json.loads(metadata.get("skeleton", "")), tensors)
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        # the skeleton is JSON that a damaged or hand-made file may not hold
        raise CheckpointError(
            f"the checkpoint {str(path)!r} is damaged ({type(error).__name__}): delete it to "
            "start over, or choose another --out"
        ) from None


def _split(value: Any, tensors: dict[str, Tensor], key: str) -> Any:
    if isinstance(value, Tensor):
        tensors[key] = value.detach().contiguous().cpu()
        return {"__tensor__": key}
    if isinstance(value, dict):
        # keys keep their type (optimiser state is keyed by int)
        return {"__dict__": [[k, _split(v, tensors, f"{key}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"cannot store a {type(value).__name__} at '{key}' in a checkpoint")


def _join(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(_join(v, tensors) for v in skeleton["__tuple__"])
        return {k: _join(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [_join(v, tensors) for v in skeleton]
    return skeleton
