"""The demo's numbers: run ``bcosify demo`` and write its metrics to ``docs/benchmarks.md``.

Accuracy of the standard, B-cosified and from-scratch models; for every explanation the grid
pointing game, localisation inside the object masks, deletion AUC and time per image; the
issue's targets; and the wall-clock time of the whole run.

    .venv/bin/python benchmarks/bench_demo.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import command_line, load_average, machine, publish

from bcosify.cli.demo import PRESETS, run_demo

SECTION = "bench_demo"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(metrics: dict[str, Any], preset: str, command: str, loads: tuple[str, str]) -> str:
    """The markdown section for one demo run's ``metrics``."""
    lines = [
        f"## The demo (`bcosify demo`, preset `{preset}`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}; 1-minute load average {loads[0]} before the run and {loads[1]} "
        "after it.",
        "",
        f"Wall-clock time of the whole run: {metrics['total_seconds']:.0f} s, of which training "
        f"{metrics['training_seconds']:.0f} s.",
        "",
        "| model | top-1 | top-5 |",
        "|---|---:|---:|",
    ]
    for name, acc in metrics["accuracy"].items():
        lines.append(f"| {name} | {acc['top1']:.1%} | {acc['top5']:.1%} |")
    lines += [
        "",
        "| explanation (model) | pointing game 2x2 | inside the mask | deletion AUC | ms / image |",
        "|---|---:|---:|---:|---:|",
    ]
    ranked = sorted(
        metrics["explanations"].items(), key=lambda kv: -(kv[1]["pointing_game_2x2"] or -1.0)
    )
    for name, r in ranked:
        lines.append(
            f"| {name} | {_score(r['pointing_game_2x2'])} | {r['mask_localisation']:.3f} | "
            f"{r['deletion_auc']:.3f} | {1000 * r['seconds_per_image']:.1f} |"
        )
    lines += [
        "",
        "Pointing game: 2 x 2 grids of confidently classified test images (1 is perfect, 0.25 "
        "uniform). Inside the mask: share of the positive attribution on the object. Deletion "
        "AUC (lower is better) compares explanations of one model only: the B-cos models' "
        "probabilities are sigmoids (BCE training), the standard model's a softmax. Post-hoc "
        "methods explain the standard model; ms / image: a warm-up call, then the median of "
        "up to 5 calls on 32 images (no more once 1 s has been spent).",
    ]
    lines += ["", "Targets:", ""]
    lines += [
        f"- {name.replace('_', ' ')}: {'met' if met else 'NOT met'}"
        for name, met in metrics["targets"].items()
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--out", type=Path, help="where the demo writes (default: a temp dir)")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bcosify-demo-"))
    before = load_average()
    started = time.perf_counter()
    metrics = run_demo(PRESETS[args.preset], out, progress=False)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; output in {out}")
    command = command_line("bench_demo.py", argv)
    text = report(metrics, args.preset, command, (before, load_average()))
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
