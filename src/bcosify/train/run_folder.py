"""The run folder of a training run: one run at a time, no stale files, a log that is JSON.

- :func:`hold_run_folder` holds the run folder for the whole run
  (:func:`bcosify.folders.hold_folder`, on every rank under ``torchrun``), so a second run on
  the same folder stops with a clear error instead of interleaving its checkpoints and log
  with the first.
- While holding the lock it deletes the temporary files that writers killed mid-write left
  behind (:func:`bcosify.serialization.remove_stale_temporaries`).
- :class:`MetricsLog` writes ``metrics.jsonl``: strict JSON (a non-finite number is ``null``),
  and on a resumption it first drops the records after the checkpoint's step, so that every
  step appears once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RunFolderBusyError, StorageError
from ..folders import acquire_folder, release_folder
from ..serialization import atomic_write
from .distributed import Distributed

__all__ = ["METRICS_FILE", "MetricsLog", "hold_run_folder"]

METRICS_FILE = "metrics.jsonl"
# sub-folders whose files are written atomically, and so may hold stale temporaries
_WRITTEN_FOLDERS = (".", "model", "clip")


@contextlib.contextmanager
def hold_run_folder(out: str | Path, dist: Distributed | None = None) -> Iterator[Path]:
    """Hold the run folder ``out`` (created if needed) for the duration, exclusively.

    Rank 0 takes the lock (and removes stale temporary files); every rank learns whether it got
    it, so that under ``torchrun`` all processes stop together. Nested use in one process (a
    distillation around its training run) is fine.

    Example:
        >>> import tempfile
        >>> with hold_run_folder(tempfile.mkdtemp()) as folder:
        ...     folder.is_dir()
        True
    """
    dist = dist or Distributed()
    folder = Path(out)
    failure: BaseException | None = None
    if dist.is_main:
        try:
            acquire_folder(folder, _WRITTEN_FOLDERS)
        except (RunFolderBusyError, StorageError) as error:
            failure = error
    (failed,) = dist.sum([1.0 if failure is not None else 0.0])
    if failure is not None:
        raise failure
    if failed:
        raise RunFolderBusyError(f"rank 0 could not take the run folder {str(folder)!r}")
    try:
        yield folder
    finally:
        if dist.is_main:
            release_folder(folder)


def _strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, which JSON can hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) and, optionally, TensorBoard; rank 0 only.

    ``resumed_step`` is the step the run continues from: records of later steps (written
    before an interruption, after the last checkpoint) are dropped first.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> log = MetricsLog(out, Distributed(), resumed_step=0)
        >>> log.write({"step": 1, "loss": float("nan")}); log.write({"step": 2, "loss": 0.5})
        >>> log = MetricsLog(out, Distributed(), resumed_step=1)  # resumed from step 1
        >>> (out / METRICS_FILE).read_text()
        '{"step": 1, "loss": null}\\n'
    """

    def __init__(
        self, out: Path, dist: Distributed, resumed_step: int, tensorboard: bool = False
    ) -> None:
        self.path = out / METRICS_FILE if dist.is_main else None
        self.writer = None
        if self.path is None:
            return
        if self.path.is_file():
            self._truncate(resumed_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                from .recipes import RecipeError

                raise RecipeError(
                    "TensorBoard logging needs the tensorboard package: pip install tensorboard"
                ) from error
            # purge_step: events after the checkpoint's step are dropped, as in the log
            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_step)

    def _truncate(self, step: int) -> None:
        assert self.path is not None
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(json.dumps(_strict(record), allow_nan=False) + "\n")
        atomic_write(self.path, lambda path: path.write_text("".join(kept)))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(_strict(record), allow_nan=False) + "\n"
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:  # not through a link planted as the log: it would append to another file
            with os.fdopen(os.open(self.path, flags, 0o666), "a") as handle:
                handle.write(line)
        except OSError as error:
            raise StorageError(
                error.errno, f"could not append to {str(self.path)!r}: {error.strerror}"
            ) from error
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
