"""Saved models on disk: safetensors weights and a JSON config, each written atomically.

Nothing here unpickles: weights are safetensors, configs are JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import CheckpointError

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "atomic_write",
    "read_config_json",
    "read_weights",
    "write_pretrained",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` for a temporary file beside ``target``, then rename it.

    A process killed mid-write leaves ``target`` as it was (or absent), never half-written.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda path: path.write_text("done"))
        >>> target.read_text(), len(list(target.parent.iterdir()))
        ('done', 1)
    """
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_pretrained(directory: str | Path, module: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``module``'s state dict as :data:`WEIGHTS_FILE` and ``config`` as
    :data:`CONFIG_FILE` in ``directory`` (created if needed); returns the directory.

    Example:
        >>> import tempfile, torch
        >>> out = write_pretrained(tempfile.mkdtemp(), torch.nn.Linear(2, 2), {"format": "x"})
        >>> sorted(p.name for p in out.iterdir()), read_config_json(out)
        (['config.json', 'model.safetensors'], {'format': 'x'})
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda path: save_file(state, str(path)))
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(directory / CONFIG_FILE, lambda path: path.write_text(text))
    return directory


def read_config_json(directory: str | Path) -> dict[str, Any]:
    """The :data:`CONFIG_FILE` of a saved model, with clear errors when missing or broken."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(directory)!r} is not a saved bcosify model: {CONFIG_FILE} is missing "
            "(save one with model.save_pretrained(directory))"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} is not a valid bcosify config: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} is not a bcosify config: it holds no JSON object")
    return config


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The :data:`WEIGHTS_FILE` of a saved model, read without pickles."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: the saved model is incomplete")
    try:
        return load_file(str(path))
    except Exception as error:
        raise CheckpointError(f"could not read {str(path)!r}: {error}") from None
