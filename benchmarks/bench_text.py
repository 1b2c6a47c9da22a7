"""B-cos language models, measured on the synthetic text task with ground-truth evidence.

Run it as::

    .venv/bin/python benchmarks/bench_text.py --write docs/benchmarks.md

It runs the text demo (:func:`bcosify.demo.text.run_text_demo`, the same as ``bcosify demo
--text``): on :class:`bcosify.data.text.SyntheticTexts` (4 topics; a topic's keywords planted
among filler words and negated keywords, with the word-level tokenizer) a small BERT trained
with the ``standard`` recipe is the original; it is B-cosified and fine-tuned (``bcosify-lm``),
against the same B-cos architecture from random weights with the same budget (``bcos-scratch``).
Accuracy on the test split; the B-cosified model's own explanation against Captum's Saliency,
InputXGradient, IntegratedGradients, DeepLift, Occlusion and LIME on the original (and, as a
control, on the B-cosified model): token pointing game, comprehensiveness, sufficiency (ERASER)
and time per explanation, with bootstrap 95% intervals over texts. Under a shared machine the
timings are noisy: compare them within one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import command_line, load_average, machine, publish

from bcosify.demo.text import (
    EXPLANATION_HEADER,
    TEXT_PRESETS,
    TextDemoSettings,
    accuracy_rows,
    explanation_rows,
    run_text_demo,
)

SECTION = "bench_text"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
) -> list[str]:
    """A markdown table, the first ``text_columns`` left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return [f"| {' | '.join(r)} |" for r in (header, align, *rows)]


def report(
    metrics: dict[str, Any], settings: TextDemoSettings, command: str, described: str
) -> str:
    lines = [
        f"Machine: {described}; load average {load_average()} at the end. Command: `{command}`. "
        f"Settings: {metrics['settings']}. Total {metrics['total_seconds']:.0f} s.",
        "",
        f"Accuracy on {settings.num_test} test texts (4 topics, chance 0.25), bootstrap 95% "
        "intervals over texts; B-cosified and from scratch with the same budget "
        f"({settings.bcos_epochs} epochs, lr {settings.bcos_lr:g}):",
        "",
        *markdown_table(["model", "top-1 [95%]", "training s"], accuracy_rows(metrics)),
        "",
        f"Explanations of the label on {metrics['explained']} test texts: the B-cosified model's "
        "own (bcos) against post-hoc methods on the original and, as a control, on the "
        "B-cosified model. Pointing game: the top word is an un-negated keyword of the label's "
        f"topic (a uniform pick scores {metrics['pointing_chance']:.3f}); comprehensiveness: "
        "higher is better; sufficiency: lower is better; each on its own model's probabilities "
        "(sigmoid for B-cos, softmax for the original).",
        "",
        *markdown_table(EXPLANATION_HEADER, explanation_rows(metrics), text_columns=2),
        "",
        "Targets: " + "; ".join(metrics["headline"]) + ".",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--epochs", type=int, help="epochs of every training run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    settings = TEXT_PRESETS["test" if args.quick else "default"]
    if args.epochs:
        settings = replace(settings, original_epochs=args.epochs, bcos_epochs=args.epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # on a shared machine, fewer threads spin less
    try:
        described = machine()  # with the threads it runs on
        with tempfile.TemporaryDirectory() as out:
            metrics = run_text_demo(settings, Path(out))
    finally:
        torch.set_num_threads(threads)
    print(f"done in {metrics['total_seconds']:.0f} s", file=sys.stderr)
    text = report(metrics, settings, command_line("bench_text.py", argv), described)
    title = "## B-cos language models (synthetic text task)"
    return publish(f"{title}\n\n{text}", SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
