"""``bcosify <command>``: the entry point of the command line.

A mistake is one line on stderr and a non-zero exit, never a traceback: 2 for a bad command
line (argparse's errors and every :class:`~bcosify.errors.UsageError`), 1 when the run could
not go on (every other :class:`~bcosify.errors.BcosifyError`, and files that cannot be
written), 130 when interrupted. ``--debug`` (or ``BCOSIFY_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

from .._version import __version__
from ..device import idle_cores
from ..errors import BcosifyError
from . import convert, demo, evaluate, example, explain, train
from .arguments import positive_int

__all__ = ["build_parser", "commands", "main"]

DEBUG_VARIABLE = "BCOSIFY_DEBUG"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``bcosify``: one sub-parser per command, each with ``--debug`` and
    ``--threads``.

    Example:
        >>> sorted(commands(build_parser()))
        ['convert', 'demo', 'evaluate', 'example', 'explain', 'train']
    """
    parser = _Parser(
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
    for command in (parser, *commands.choices.values()):
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"show the traceback of an error (or set {DEBUG_VARIABLE}=1)",
        )
    for command in commands.choices.values():
        command.add_argument(
            "--threads",
            type=positive_int,
            help="CPU threads for torch (default: the cores that other work leaves idle, at least "
            "1: the threads of a small model wait for each other, and on a busy machine that "
            "is many times slower than one thread)",
        )
    return parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parser of every command, by name."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        SystemExit: 0
    """
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    name = f"bcosify {args.command}"
    with warnings.catch_warnings(), _threads(args.threads):
        if not debug:
            warnings.showwarning = _one_line_warning(name)
        try:
            return int(args.run(args) or 0)
        except BcosifyError as error:
            if debug:
                raise
            _report(name, error)
            return error.exit_status
        except OSError as error:  # a file that cannot be read or written: not a bug
            if debug:
                raise
            _report(name, error)
            return 1
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{name}: interrupted", file=sys.stderr)
            return 130


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads for the command (``--threads``, else the idle cores), restored
    afterwards (the tests call commands in their own process)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count or idle_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _one_line(message: str) -> str:
    """A message on one line: its lines joined (after a colon with a space, else with '; ')."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def _report(name: str, error: BaseException) -> None:
    print(f"{name}: error: {_one_line(str(error))}", file=sys.stderr)


def _one_line_warning(name: str):  # type: ignore[no-untyped-def]
    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        print(f"{name}: warning: {_one_line(str(message))}", file=file or sys.stderr)

    return show
