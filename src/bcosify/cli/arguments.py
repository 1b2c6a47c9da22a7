"""Argument types and checks shared by the commands: each mistake is one clear line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError

__all__ = [
    "at_least",
    "finite_float",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
]


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``.

    Example:
        >>> at_least(0)("0")
        0
        >>> at_least(1)("0")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: must be a whole number of at least 1, got '0'
    """

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of at least {minimum}, got {text!r}"
            )
        return value

    whole_number.__name__ = f"whole number >= {minimum}"  # argparse names the type by it
    return whole_number


positive_int = at_least(1)


def finite_float(text: str) -> float:
    """An argparse type: a finite number (no nan, no inf).

    Example:
        >>> finite_float("0.5"), finite_float("1e-4")
        (0.5, 0.0001)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0.

    Example:
        >>> positive_float("90")
        90.0
        >>> positive_float("0")
        Traceback (most recent call last):
        argparse.ArgumentTypeError: must be a number above 0, got '0'
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def output_folder(path: Path, flag: str = "--out") -> Path:
    """``path`` as a folder to write into: it may exist as a folder, or not yet exist.

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("x")
        >>> output_folder(file)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        bcosify.errors.UsageError: --out ...notes.txt is a file; pass a folder (new or existing)
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file; pass a folder (new or existing)")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {path} is inside {parent}, which is a file")
    return path


def output_file(path: Path, flag: str = "--out") -> Path:
    """``path`` as a file to write: not an existing folder, not inside a file.

    Example:
        >>> import tempfile
        >>> output_file(Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        bcosify.errors.UsageError: --out ... is a folder; pass a file name, e.g. results.json
    """
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; pass a file name, e.g. results.json")
    output_folder(path.parent, flag=f"{flag}'s folder")
    return path
