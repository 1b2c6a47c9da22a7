"""``bcosify <command>``: the entry point of the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import BcosifyError
from . import convert, demo, evaluate, example, explain, train

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: 0
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="bcosify",
        description="Turn pretrained networks into B-cos networks and explain them.",
    )
    parser.add_argument("--version", action="version", version=f"bcosify {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(commands)
    example.add_parser(commands)
    explain.add_parser(commands)
    evaluate.add_parser(commands)
    convert.add_parser(commands)
    train.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BcosifyError as error:
        print(f"bcosify {args.command}: error: {error}", file=sys.stderr)
        return 2
