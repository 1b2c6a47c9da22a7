"""Running the command line, and importing the benchmark scripts, in the test process."""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from bcosify.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``bcosify <argv>`` in this process: the exit status, stdout and stderr (argparse's own
    exits included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exit:  # argparse
            status = exit.code
    return status, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def benchmark_script(name: str, *helpers: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as the scripts import each other (from their folder),
    and forgotten afterwards with the ``helpers`` it imported and ``common``."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
        for module in (name, *helpers, "common"):
            sys.modules.pop(module, None)
