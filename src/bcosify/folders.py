"""Output folders: held by one process at a time, and written without following planted links.

:func:`hold_folder` takes an exclusive ``fcntl.flock`` on ``<folder>/.lock`` for as long as a
command writes there, so a second command writing into the same folder stops with a
:class:`~bcosify.errors.RunFolderBusyError` instead of mixing its files with the first's. The
operating system releases the lock when its holder exits, however it exits (``kill -9``
included), so a lock is never stale. The lock file is opened without following a link, so a
link planted as ``.lock`` cannot make bcosify write into another file.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import RunFolderBusyError, StorageError
from .serialization import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are then not protected
    fcntl = None  # type: ignore[assignment]

__all__ = ["acquire_folder", "hold_folder", "release_folder"]

_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, nesting depth)


@contextlib.contextmanager
def hold_folder(folder: str | Path, written: tuple[str, ...] = (".",)) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) exclusively for the duration; nested use in one
    process is fine. While holding it, the temporary files that writers killed mid-write left
    in ``folder`` (and its sub-folders ``written``) are removed.

    Example:
        >>> import tempfile
        >>> with hold_folder(tempfile.mkdtemp()) as held:
        ...     other = os.open(held, os.O_RDONLY)
        ...     try:
        ...         fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ...     except BlockingIOError:
        ...         print("held")
        ...     finally:
        ...         os.close(other)
        held
        >>> list(held.iterdir())
        []
    """
    path = Path(folder)
    acquire_folder(path, written)
    try:
        yield path
    finally:
        release_folder(path)


def acquire_folder(folder: Path, written: tuple[str, ...] = (".",)) -> None:
    """Take the lock of ``folder`` (see :func:`hold_folder`); :func:`release_folder` gives it
    back."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        if key in _held:
            handle, depth = _held[key]
            _held[key] = (handle, depth + 1)
            return
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        what = "is a file, not a folder" if folder.is_file() else f"cannot be used: {error}"
        raise StorageError(error.errno, f"the folder {str(folder)!r} {what}") from None
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.fstat(handle))
            os.close(handle)
            raise RunFolderBusyError(
                f"the folder {str(folder)!r} is in use by another bcosify process ({holder}): "
                "wait for it to finish or stop it, or choose another --out"
            ) from None
    _held[key] = (handle, 1)
    for name in written:
        remove_stale_temporaries(folder / name)


def _holder(info: os.stat_result) -> str:
    """Who holds the lock of the folder ``info`` describes: ``pid N`` from Linux's
    ``/proc/locks``, else ``another process``."""
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
                    return f"pid {fields[4]} on {socket.gethostname()}"
    except OSError:
        pass
    return "another process"


def release_folder(folder: Path) -> None:
    """Give back the lock :func:`acquire_folder` took (the last of nested holds closes it)."""
    key = folder.resolve()
    handle, depth = _held[key]
    if depth > 1:
        _held[key] = (handle, depth - 1)
        return
    del _held[key]
    os.close(handle)  # closing the descriptor releases the lock
