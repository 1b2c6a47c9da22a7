"""The demo's explanations in the default memory format against channels-last, per call.

    .venv/bin/python benchmarks/bench_layout.py --write docs/benchmarks.md

The demo's evaluation explains its two CNNs (the original, behind its input normalisation, and
the B-cosified one; random weights: the time does not depend on them) on grids of its test
images, one explainer call at a time with the options and batch sizes the demo gives it. Each
call is timed with the models in PyTorch's default (contiguous) layout and as channels-last
copies, interleaved, with the medians of the repetitions after a warm-up; the two layouts'
attributions are compared too. The last rows are the demo's speed race: 64 single images,
Integrated Gradients at 50 steps on the original against the B-cos explanation.
"""

from __future__ import annotations

import argparse
import copy
import functools
from collections.abc import Sequence

import torch
from common import command_line, interleaved_medians, load_average, machine, publish
from torch import Tensor, nn

from bcosify.demo import PRESETS
from bcosify.demo.evaluation import EXPLAINED, POSTHOC, Evaluation, gradcam_choice
from bcosify.demo.training import datasets
from bcosify.evaluate import build_explainer
from bcosify.models import create
from bcosify.train import Normalized, get_recipe, prepare_model
from bcosify.train.prepare import input_normalization

SECTION = "bench_layout"
LAYOUTS = {"default": torch.contiguous_format, "channels-last": torch.channels_last}


def models(classes: int, widths: Sequence[int]) -> dict[str, nn.Module]:
    """The demo's original (normalising its input) and its B-cosified conversion."""
    torch.manual_seed(0)
    original = create("bcosify:small_cnn", num_classes=classes, widths=list(widths)).eval()
    converted = prepare_model(copy.deepcopy(original), get_recipe("bcosify-cnn")).eval()
    return {
        "original": Normalized(original, *input_normalization(original)).eval(),
        "B-cosified": converted,
    }


def calls(grid_sizes: Sequence[int]) -> list[tuple[str, str, int]]:
    """(model, method, grid size) of every kind of explainer call the demo's pointing game
    makes; grid size 1: the speed race's single images."""
    cases = [("B-cosified", "bcos", n) for n in grid_sizes]
    cases += [(name, method, n) for name in EXPLAINED for method in POSTHOC for n in grid_sizes]
    return [*cases, ("original", "integrated_gradients", 1), ("B-cosified", "bcos", 1)]


def batch(evaluation: Evaluation, n: int) -> tuple[Tensor, Tensor]:
    """One call's inputs as the pointing game makes them: ``per_pass(n) // n**2`` distinct grids
    of ``n x n`` test images, each repeated for its cells' classes (n = 1: the evaluation's
    single images)."""
    if n == 1:
        return evaluation.images, evaluation.labels
    cells, size = n * n, evaluation.images.shape[-1]
    grids = max(1, evaluation.per_pass(n) // cells)
    pick = torch.arange(grids * cells) % len(evaluation.images)
    images = evaluation.images[pick].view(grids, n, n, 3, size, size)
    images = images.permute(0, 3, 1, 4, 2, 5).reshape(grids, 3, n * size, n * size)
    return images.repeat_interleave(cells, 0), evaluation.labels[pick]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: the test preset")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    s = PRESETS["test" if args.quick else "default"]
    before = load_average()
    evaluation = Evaluation(s, datasets(s)["test"])
    nets = models(s.classes, s.widths)
    laid_out = {
        (name, layout): copy.deepcopy(net).to(memory_format=memory_format)
        for name, net in nets.items()
        for layout, memory_format in LAYOUTS.items()
    }
    rows = []
    layers = {name: gradcam_choice(net, evaluation.images[:1])[0] for name, net in nets.items()}
    for name, method, n in calls(s.grid_sizes):
        options: dict[str, object] = {}
        if method == "integrated_gradients" and n == 1:  # the speed race's published budget
            options["n_steps"] = 50
        if method == "gradcam":
            options["layer"] = layers[name]
        explainers = {
            layout: build_explainer(
                method, laid_out[name, layout], **{**evaluation.options(method, n), **options}
            )
            for layout in LAYOUTS
        }
        inputs, targets = batch(evaluation, n)
        outputs = {layout: e.attribute(inputs, targets) for layout, e in explainers.items()}
        gap = float((outputs["default"] - outputs["channels-last"]).norm())
        gap /= max(float(outputs["default"].norm()), 1e-30)
        turns = {
            layout: functools.partial(explainer.attribute, inputs, targets)
            for layout, explainer in explainers.items()
        }
        medians = interleaved_medians(turns, args.repeats)
        rows.append((name, method, n, len(inputs), medians, gap))
        print(name, method, n, medians, f"{gap:.0e}", flush=True)
    lines = [
        f"Machine: {machine()}; load average {before} before the run and {load_average()} "
        f"after it. Command: `{command_line('bench_layout.py', argv)}`.",
        "",
        "One explainer call of the demo's evaluation (its options and batch: the grid images "
        "of one forward pass), with the models in the default layout and as channels-last "
        f"copies, interleaved; medians of {args.repeats} repetitions after a warm-up. Gap: the "
        "relative difference between the two layouts' attributions. Grid 1x1: the speed "
        "race's single images (Integrated Gradients at 50 steps).",
        "",
        "| model | explanation | grid | images | default s | channels-last s "
        "| default / channels-last | gap |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, method, n, count, medians, gap in rows:
        default, last = medians["default"], medians["channels-last"]
        lines.append(
            f"| {name} | {method} | {n}x{n} | {count} | {default:.3f} | {last:.3f} "
            f"| {default / last:.2f} | {gap:.0e} |"
        )
    title = "## The demo's explanations: default layout against channels-last (`bench_layout.py`)"
    return publish(f"{title}\n\n" + "\n".join(lines), SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
