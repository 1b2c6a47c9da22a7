"""Saved models on disk: safetensors weights and a JSON config, each written atomically.

Nothing here unpickles: weights are safetensors, configs are JSON.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .errors import CheckpointError, StorageError

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "atomic_write",
    "read_config_json",
    "read_weights",
    "remove_stale_temporaries",
    "temporary_name",
    "write_pretrained",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEMPORARY_SUFFIX = ".tmp"


def temporary_name(target: Path) -> Path:
    """A fresh temporary file name beside ``target``: ``.<name>.<random>.tmp``.

    Every temporary file bcosify writes follows this pattern, so that
    :func:`remove_stale_temporaries` can find what a killed process left behind.

    Example:
        >>> temporary_name(Path("run/checkpoint.safetensors")).name.startswith(
        ...     ".checkpoint.safetensors.")
        True
    """
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` for a temporary file beside ``target``, then rename it.

    A process killed mid-write leaves ``target`` as it was (or absent), never half-written; the
    temporary file (see :func:`temporary_name`) is removed on any error. The file gets the
    usual permissions (``0o666`` less the umask), like any file the process creates. A write
    that fails for lack of space or permission raises a :class:`StorageError` in one line.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda path: path.write_text("done"))
        >>> target.read_text(), len(list(target.parent.iterdir()))
        ('done', 1)
    """
    temporary = temporary_name(target)
    try:
        # created here with the umask applied (O_EXCL: never another process's file), and that
        # mode kept: writers that replace the file (safetensors does) would leave it 0o600
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = temporary.stat().st_mode & 0o777
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        failure = None if isinstance(error, StorageError) else _write_failure(error)
        if failure is not None:
            number, reason = failure
            kept = "the previous version is intact" if target.exists() else "nothing was written"
            raise StorageError(
                number,
                f"could not write {str(target)!r}: {reason} ({kept}); free space or "
                "fix the permissions and run the same command again",
            ) from error
        raise


# safetensors reports a failed write as "Error while serializing: I/O error: <reason> (os error
# <errno>)" in its own exception type, which is no OSError
_SAFETENSORS_IO = re.compile(r"I/O error: (?P<reason>.*?)(?: \(os error (?P<errno>\d+)\))?$")


def _write_failure(error: BaseException) -> tuple[int | None, str] | None:
    """The errno and reason of a write that failed for the file system (an ``OSError``, or a
    safetensors error that wraps one), else None: any other error is not a storage problem."""
    from safetensors import SafetensorError

    if isinstance(error, OSError):
        return error.errno, error.strerror or str(error)
    if isinstance(error, SafetensorError):
        found = _SAFETENSORS_IO.search(str(error))
        if found:
            number = int(found["errno"]) if found["errno"] else None
            return number, os.strerror(number) if number else found["reason"]
    return None


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``directory``; returns
    them. Those are bcosify's own (:func:`temporary_name`) and safetensors' (``.tmpXXXXXX``:
    it writes through a temporary file of its own too). Call it only while no other process
    writes there.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = temporary_name(folder / "model.safetensors").write_bytes(b"half")
        >>> _ = (folder / ".tmpAb12Cd").write_bytes(b"half")
        >>> removed = remove_stale_temporaries(folder)
        >>> len(removed), list(folder.iterdir())
        (2, [])
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted({*directory.glob(f".*{TEMPORARY_SUFFIX}"), *directory.glob(".tmp*")})
    for path in stale:
        if path.is_file():
            path.unlink(missing_ok=True)
    return stale


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
