"""Running the command line in the test process."""

from __future__ import annotations

import contextlib
import io

from bcosify.cli import main


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
