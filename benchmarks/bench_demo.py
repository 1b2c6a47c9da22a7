"""The demo's numbers over seeds: run ``bcosify demo`` for 3 seeds, write mean and spread.

For each seed the whole demo runs (its original trained, not taken from a cache, so every
wall-clock time is a first run's); the section of ``docs/benchmarks.md`` gives, for every
number, the mean over the seeds and their range (lowest to highest): accuracy, the cost
measurement, the pointing game, localisation, deletion and time of every explanation, how often
each target was met, the colour fidelity of the B-cos explanations, and the wall-clock times.

    .venv/bin/python benchmarks/bench_demo.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import command_line, load_average, machine, publish

from bcosify.demo import PRESETS, run_demo
from bcosify.device import idle_cores

SECTION = "bench_demo"


def spread(values: Sequence[float | None], form: Callable[[float], str]) -> str:
    """``mean (lowest to highest)`` of the measured values; n/a for those not measured."""
    kept = [v for v in values if v is not None]
    if not kept:
        return "n/a"
    text = form(statistics.fmean(kept))
    if len(kept) > 1:
        text += f" ({form(min(kept))} to {form(max(kept))})"
    missing = len(values) - len(kept)
    return text + (f", {missing} n/a" if missing else "")


def _score(value: float) -> str:
    return f"{value:.3f}"


def _percent(value: float) -> str:
    return f"{value:.1%}"


def _game(result: dict[str, Any], grid: str) -> float | None:
    return result["pointing_game"].get(grid, {}).get("mean")


def report(runs: list[dict[str, Any]], preset: str, command: str, loads: tuple[str, str]) -> str:
    """The markdown section for the demo's metrics of several seeds (``runs``)."""
    seeds = [r["settings"]["seed"] for r in runs]
    first = runs[0]
    grids = list(next(iter(first["explanations"].values()))["pointing_game"])
    lines = [
        f"## The demo (`bcosify demo`, preset `{preset}`, seeds {', '.join(map(str, seeds))})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}; 1-minute load average {loads[0]} before the runs and "
        f"{loads[1]} after them (the cores were shared when it is above 0).",
        "",
        "Each number: the mean over the seeds, and in brackets the lowest to the highest. Each "
        "seed is a first run: the original trained, not loaded from the cache.",
        "",
        f"Wall-clock time of a run: {spread([r['total_seconds'] for r in runs], _seconds)}, of "
        f"which training {spread([r['training_seconds'] for r in runs], _seconds)} (the "
        f"original: {spread([r['original_training']['seconds'] for r in runs], _seconds)}).",
        "",
        "| model | top-1 (test) | points vs the original |",
        "|---|---:|---:|",
    ]
    for name in first["accuracy"]:
        top1 = spread([r["accuracy"][name]["top1"]["mean"] for r in runs], _percent)
        gap = (
            ""
            if name == "original"
            else spread(
                [100 * r["accuracy_gap_to_original"][name]["mean"] for r in runs],
                lambda v: f"{v:+.1f}",
            )
        )
        lines.append(f"| {name} | {top1} | {gap} |")
    plateaus = sum(r["original_training"]["plateau_reached"] for r in runs)
    cost = [r["cost"] for r in runs]
    lines += [
        "",
        f"The original reached a plateau ({first['settings']['finetune_epochs']} more epochs "
        f"gained less than {first['settings']['plateau_gain']} point) in {plateaus} of "
        f"{len(runs)} seeds, after "
        f"{spread([len(r['training_curves']['original']['epoch']) for r in runs], _one)} epochs.",
        "",
        "The cost: the from-scratch model's final validation accuracy "
        f"{spread([c['scratch_final_val'] for c in cost], _percent)}; the B-cosified model first "
        f"reaches it at epoch {spread([c['reached_at_epoch'] for c in cost], _one)}, speed-up "
        f"{spread([c['epoch_speedup'] for c in cost], _times)} in epochs and "
        f"{spread([c['time_speedup'] for c in cost], _times)} in time (n/a: reached before "
        "fine-tuning, epoch 0, or never).",
        "",
        "| explanation (model) | "
        + " | ".join(f"pointing game {g}" for g in grids)
        + " | inside the mask | deletion AUC | ms / image |",
        "|---|" + "---:|" * (len(grids) + 3),
    ]
    last = grids[-1]
    order = sorted(
        first["explanations"],
        key=lambda k: -statistics.fmean([_game(r["explanations"][k], last) or 0.0 for r in runs]),
    )
    for name in order:
        results = [r["explanations"][name] for r in runs]
        games = [spread([_game(x, g) for x in results], _score) for g in grids]
        inside = spread([x["mask_localisation"]["mean"] for x in results], _score)
        deletion = spread([x["deletion_auc"]["mean"] for x in results], _score)
        ms = spread([1000 * x["seconds_per_image"] for x in results], lambda v: f"{v:.1f}")
        lines.append(f"| {name} | {' | '.join(games)} | {inside} | {deletion} | {ms} |")
    coarse = [
        r["explanations"]["bcos (B-cosified)"].get("pointing_game_at_occlusion_windows", {})
        for r in runs
    ]
    lines += [
        "",
        "The B-cosified model's own explanations summed over occlusion's windows (half a cell, "
        "moved by their width), the two at one resolution: "
        + ", ".join(
            f"{spread([c.get(g, {}).get('mean') for c in coarse], _score)} ({g})" for g in grids
        )
        + ".",
    ]
    ig = spread(
        [1000 * r["speed"]["seconds_per_image"]["integrated_gradients"] for r in runs],
        lambda v: f"{v:.1f}",
    )
    bcos = spread([1000 * r["speed"]["seconds_per_image"]["bcos"] for r in runs], _ms)
    ratio = spread([r["speed"]["ratio"] for r in runs], lambda v: f"{v:.0f}x")
    layer = first["explanations"]["gradcam (original)"]["layer"]
    lines += [
        "",
        f"Timed in turns on the single images: B-cos {bcos} ms / image, Integrated Gradients "
        f"at the published 50 steps {ig} ms / image, {ratio} slower (the speed target). GradCAM "
        f"on `{layer['name']}` ({layer['resolution']} x "
        f"{layer['resolution']}). The per-run 95% intervals are in each run's report.",
        "",
        "Colour fidelity (the mean |explanation colour - pixel colour| on each correctly "
        "classified evaluation image's strongest positive evidence inside the object; 0: the "
        "object in its own colours): "
        + "; ".join(
            f"{name} {spread(_colour(runs, name, 'colour_error'), _score)}, colours shuffled "
            f"between images {spread(_colour(runs, name, 'shuffled_control'), _score)}, the "
            "pixels' own colours rounded to 0 or 1 per channel "
            f"{spread(_colour(runs, name, 'rounded_reference'), _score)}"
            for name in first["colour_fidelity"]
        )
        + ".",
        "",
        "Targets, met in how many of the seeds:",
        "",
    ]
    for name in first["targets"]:
        judged = [r["targets"][name] for r in runs if r["targets"][name] is not None]
        unmeasured = len(runs) - len(judged)
        lines.append(
            f"- {name.replace('_', ' ')}: {sum(judged)} of {len(runs)}"
            + (f" ({unmeasured} not measurable)" if unmeasured else "")
        )
    caveats = [(r["settings"]["seed"], c) for r in runs for c in r.get("caveats", [])]
    if caveats:
        lines += ["", "Caveats:", ""]
        lines += [f"- seed {seed}: {text.removeprefix('Caveat: ')}" for seed, text in caveats]
    return "\n".join(lines)


def _colour(runs: list[dict[str, Any]], model: str, key: str) -> list[float | None]:
    return [r["colour_fidelity"][model].get(key, {}).get("mean") for r in runs]


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _one(value: float) -> str:
    return f"{value:.1f}"


def _times(value: float) -> str:
    return f"{value:.1f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="where the demos write (default: a temp dir)")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: as the demo)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the metrics of seeds whose folder under --out holds a finished run instead "
        "of running them again (to rerun one seed whose time other work disturbed)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads or idle_cores())
    out = args.out or Path(tempfile.mkdtemp(prefix="bcosify-demo-"))
    before = load_average()
    runs = []
    for seed in args.seeds:
        started = time.perf_counter()
        settings = replace(PRESETS[args.preset], seed=seed)
        # a fresh cache for every seed: the times are those of a first run
        folder = out / f"seed-{seed}"
        if args.reuse and (folder / "metrics.json").exists():
            runs.append(json.loads((folder / "metrics.json").read_text()))
            print(f"seed {seed}: read from {folder}")
            continue
        runs.append(run_demo(settings, folder, cache=folder / "cache", progress=False))
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s; output in {folder}")
    command = command_line("bench_demo.py", argv)
    text = report(runs, args.preset, command, (before, load_average()))
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
