"""Argument types and checks shared by the commands: each mistake is one clear line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError

__all__ = [
    "apart_from_inputs",
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


def apart_from_inputs(out: Path, inputs: dict[str, str | Path | None], flag: str = "--out") -> Path:
    """``out`` if it is not an input, does not contain one and does not lie inside one.

    ``inputs`` maps each flag to its value; values that are not local paths (model sources
    such as ``torchvision:resnet50``, ``synthetic``) are passed over, and an ``hf:`` source is
    its folder. Writing into an input would overwrite it (``convert --model m --out m``) or
    mix the outputs into the data.

    Example:
        >>> import tempfile
        >>> model = Path(tempfile.mkdtemp())
        >>> apart_from_inputs(model / "bcos", {"--model": model})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        bcosify.errors.UsageError: --out ... lies inside --model ...: write the output ...
    """
    target = out.resolve()
    for name, value in inputs.items():
        if value is None:
            continue
        text = str(value)
        text = text.removeprefix("hf:") if text.startswith("hf:") else text
        source = Path(text)
        if not source.exists():
            continue
        source = source.resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise UsageError(
            f"{flag} {out} {relation} {name} {value}: write the output elsewhere, so that "
            "no input is overwritten or mixed with outputs"
        )
    return out
