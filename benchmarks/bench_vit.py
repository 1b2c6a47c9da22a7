"""ViT benchmark: timm vision transformers against their B-cos conversions by bcosify.

Run it as::

    .venv/bin/python benchmarks/bench_vit.py --write docs/benchmarks.md

For ``timm:vit_tiny_patch16_224`` and ``timm:vit_small_patch16_224`` (random weights, nothing is
downloaded; 224 x 224 images, batch 8) it measures, for the original model and for the model
``bcosify.convert`` makes of it with the default options (B = 2, plain bias-free qkv
projections, logit bias):

- forward: the logits of a batch without autograd (inference);
- forward+backward: the forward with autograd plus the gradients of the summed logits with
  respect to every parameter (a training step without the optimizer);
- explanation (B-cos model): ``bcosify.explain`` for the predicted classes, one forward and one
  backward pass in explanation mode, compared with a plain gradient of the original (its logit
  with respect to the input: forward+backward for the input only).

The machine may be noisy (other processes may run): the measurements of both models are
interleaved in every repetition (their order rotates), and the median over the repetitions
after warm-up is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from common import command_line, machine, publish, timed
from torch import Tensor, nn

import bcosify
from bcosify.models import create

SECTION = "bench_vit"
MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")


@dataclass
class Timings:
    """Seconds per repetition for every measurement of one model."""

    model: str
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, measurement: str, value: float) -> None:
        self.seconds.setdefault(measurement, []).append(value)

    def median_ms(self, measurement: str) -> float:
        return 1000 * statistics.median(self.seconds[measurement])

    def min_ms(self, measurement: str) -> float:
        return 1000 * min(self.seconds[measurement])


def forward(model: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        model(x)


def forward_backward(model: nn.Module, x: Tensor) -> None:
    # torch.autograd.grad: no accumulation into .grad, so every repetition does the same work
    torch.autograd.grad(model(x).sum(), [p for p in model.parameters() if p.requires_grad])


def input_gradient(model: nn.Module, x: Tensor) -> None:
    x = x.detach().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)


def benchmark_model(arch: str, image_size: int, batch: int, repeats: int, warmup: int) -> Timings:
    """Interleave every measurement of the original and the converted ``arch``."""
    torch.manual_seed(0)
    original = create(f"timm:{arch}", img_size=image_size).eval()
    converted, _ = bcosify.convert(original)
    info = original.bcosify_source
    mean = torch.tensor(info.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(info.input_std).view(1, -1, 1, 1)
    images = torch.rand(batch, 3, image_size, image_size)
    normalised = (images - mean) / std
    tasks: list[tuple[str, Callable[[], object]]] = [
        ("original forward", lambda: forward(original, normalised)),
        ("bcos forward", lambda: forward(converted, images)),
        ("original fwd+bwd", lambda: forward_backward(original, normalised)),
        ("bcos fwd+bwd", lambda: forward_backward(converted, images)),
        ("original input gradient", lambda: input_gradient(original, normalised)),
        ("bcos explanation", lambda: bcosify.explain(converted, images)),
    ]
    timings = Timings(arch)
    for repetition in range(warmup + repeats):
        shift = repetition % len(tasks)
        for name, task in tasks[shift:] + tasks[:shift]:
            seconds = timed(task)
            if repetition >= warmup:
                timings.add(name, seconds)
        print(f"  {arch}: repetition {repetition + 1}/{warmup + repeats}", file=sys.stderr)
    return timings


PAIRS = (
    ("forward", "original forward", "bcos forward"),
    ("fwd+bwd", "original fwd+bwd", "bcos fwd+bwd"),
    ("input gradient / explanation", "original input gradient", "bcos explanation"),
)


def table(results: Sequence[Timings]) -> str:
    """Medians (fastest repetition in brackets) in ms; ratios of the B-cos model to the original."""
    lines = [
        "| model | measurement | original ms | B-cos ms | x (medians) | x (fastest) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in results:
        for label, original, bcos in PAIRS:
            a, b = t.median_ms(original), t.median_ms(bcos)
            fastest = t.min_ms(bcos) / t.min_ms(original)
            lines.append(
                f"| {t.model} | {label} | {a:.0f} ({t.min_ms(original):.0f}) "
                f"| {b:.0f} ({t.min_ms(bcos):.0f}) | {b / a:.2f} | {fastest:.2f} |"
            )
    return "\n".join(lines)


def report(
    results: Sequence[Timings], image_size: int, batch: int, repeats: int, warmup: int, command: str
) -> str:
    return "\n".join(
        [
            "## ViT benchmark: B-cos ViTs against the original timm models",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine()}. Other processes may have run at the same time.",
            "",
            f"Models: timm {', '.join(r.model for r in results)} with random weights, float32, "
            f"{image_size} x {image_size} images, batch {batch}; the B-cos model is "
            "`bcosify.convert(model)` with the default options (B = 2, plain bias-free qkv "
            "projections, logit bias), which takes the unnormalised images.",
            "",
            "Method: *forward* is one forward pass without autograd; *fwd+bwd* is a forward "
            "with autograd plus `torch.autograd.grad` of the summed logits for every parameter; "
            "*explanation* is `bcosify.explain(model, images)` for the predicted classes (one "
            "forward and one backward in explanation mode), set against the plain input gradient "
            "of the original's predicted logit (forward+backward for the input only). All six "
            f"measurements are interleaved in every repetition (rotating order); {warmup} "
            f"warm-up repetitions, then the median of {repeats} (in brackets: the fastest "
            "repetition, the least disturbed by other processes). x = B-cos / original.",
            "",
            table(results),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="rewrite this script's section of FILE")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="timm architectures")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions, 1 warm-up")
    args = parser.parse_args(argv)
    repeats, warmup = (2, 1) if args.quick else (args.repeats, args.warmup)
    results = [
        benchmark_model(arch, args.image_size, args.batch, repeats, warmup) for arch in args.models
    ]
    command = command_line("bench_vit.py", argv)
    text = report(results, args.image_size, args.batch, repeats, warmup, command)
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
