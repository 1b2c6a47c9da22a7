"""``bcosify demo``: the main job, end to end on built-in data (:mod:`bcosify.demo`).

The image demo trains an ordinary CNN on the synthetic shapes, B-cosifies it, trains the same
B-cos architecture from scratch, measures accuracy and every explanation method, and writes
``report.html``, ``metrics.json`` and the pictures to ``--out``; ``--text`` runs the B-cos
language-model demo instead.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ..demo import PRESETS, TEXT_PRESETS, DemoSettings, TextDemoSettings, run_demo, run_text_demo
from ..errors import UsageError
from ..folders import hold_folder

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="the whole job on built-in data: train, B-cosify, evaluate, write a report",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        help="folder for report.html, metrics.json and the pictures (default: demo-output)",
    )
    parser.add_argument("--full", action="store_true", help="a longer, more accurate run")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="settings preset")
    parser.add_argument(
        "--cache",
        type=Path,
        help="where the trained original is kept between runs (default: OUT/cache)",
    )
    parser.add_argument("--seed", type=int, help="seed of the data, the models and the grids")
    parser.add_argument(
        "--text",
        action="store_true",
        help="the B-cos language model demo instead: a small BERT on the synthetic text task "
        "(presets default and test)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.text:
        return _run_text(args)
    settings = PRESETS[args.preset or ("full" if args.full else "default")]
    if args.seed is not None:
        settings = DemoSettings(**{**asdict(settings), "seed": args.seed})
    with hold_folder(args.out):
        metrics = run_demo(settings, args.out, cache=args.cache, progress=not args.no_progress)
    print(f"\nDone in {metrics['total_seconds']:.0f} s. Open {args.out / 'report.html'}")
    for line in metrics["headline"]:
        print(f"  - {line}")
    return 0


def _run_text(args: argparse.Namespace) -> int:
    """``bcosify demo --text``: :func:`bcosify.demo.run_text_demo`."""
    if args.full or args.cache is not None:
        raise UsageError("--full and --cache are for the image demo; --text takes --preset")
    preset = args.preset or "default"
    if preset not in TEXT_PRESETS:
        raise UsageError(f"--text takes --preset {' or '.join(TEXT_PRESETS)}, not {preset}")
    settings = TEXT_PRESETS[preset]
    if args.seed is not None:
        settings = TextDemoSettings(**{**asdict(settings), "seed": args.seed})
    with hold_folder(args.out):
        metrics = run_text_demo(settings, args.out, progress=not args.no_progress)
    print(f"\nDone in {metrics['total_seconds']:.0f} s. Open {args.out / 'report.html'}")
    for line in metrics["headline"]:
        print(f"  - {line}")
    return 0
