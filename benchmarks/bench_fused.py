"""B-cos layers at B != 2: the fused autograd functions against plain autograd, per step.

    .venv/bin/python benchmarks/bench_fused.py --write docs/benchmarks.md

The training step of ``bcosify-align`` (RECIPE 11) on a timm EfficientNet-Lite0 (random
weights: the time does not depend on them) converted at B = 1.05 (and 1.1, 1.25) with its
biases kept and its norms frozen, batch 16 at 160 px: forward and backward of the B-cos
network, as in that recipe. Both paths run in the same process, interleaved; the plain path is
every B-cos layer forced through autograd over its formula (``abs``, division, ``pow``: what
every layer at ``B != 2`` ran before the fused functions took any B). Before timing, the two
paths' outputs and gradients are compared in float64 (in float32 the two roundings differ by up
to several percent in the gradients of the norms' scales, sums of many cancelling terms).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
from collections.abc import Iterator, Sequence

import torch
from common import command_line, interleaved_medians, load_average, machine, publish
from torch import Tensor, nn

import bcosify
from bcosify.models import create
from bcosify.nn import bcos

SECTION = "bench_fused"
CASES = {  # label -> (source, B, batch, image size)
    "EfficientNet-Lite0, B = 1.05 (bcosify-align)": ("timm:efficientnet_lite0", 1.05, 16, 160),
    "EfficientNet-Lite0, B = 1.1": ("timm:efficientnet_lite0", 1.1, 16, 160),
    "EfficientNet-Lite0, B = 1.25": ("timm:efficientnet_lite0", 1.25, 16, 160),
    "ResNet-18, B = 2.5": ("torchvision:resnet18", 2.5, 16, 160),
}
QUICK = {"small CNN, B = 1.1": ("bcosify:small_cnn", 1.1, 2, 32)}
PATHS = ("fused", "plain autograd")


@contextlib.contextmanager
def plain_autograd(enabled: bool) -> Iterator[None]:
    """Every B-cos layer through autograd over its formula while ``enabled``."""
    fused = bcos._BcosUnit._fused
    if enabled:
        bcos._BcosUnit._fused = lambda self, x: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        bcos._BcosUnit._fused = fused  # type: ignore[method-assign]


def student(source: str, b: float) -> nn.Module:
    """The converted network in training mode, its norms frozen, as ``bcosify-align`` trains
    it."""
    torch.manual_seed(0)
    model, _ = bcosify.convert(create(source, num_classes=10), b=b, keep_bias=True)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def step(model: nn.Module, images: Tensor, plain: bool) -> tuple[Tensor, list[Tensor]]:
    """One forward and backward: the output and the parameters' gradients."""
    model.zero_grad(set_to_none=True)
    with plain_autograd(plain):
        out = model(images)
        out.float().square().mean().backward()
    return out.detach(), [p.grad for p in model.parameters() if p.grad is not None]


def relative_gap(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def compare(model: nn.Module, images: Tensor) -> tuple[float, float]:
    """The relative gaps between the two paths' outputs and (the largest over the
    parameters) gradients."""
    fused_out, fused_grads = step(model, images, plain=False)
    plain_out, plain_grads = step(model, images, plain=True)
    grads = zip(fused_grads, plain_grads, strict=True)
    return relative_gap(fused_out, plain_out), max(relative_gap(f, p) for f, p in grads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny CNN")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    before = load_average()
    rows = []
    for label, (source, b, batch, size) in (QUICK if args.quick else CASES).items():
        model = student(source, b)
        images = torch.rand(batch, 3, size, size)
        gaps = compare(copy.deepcopy(model).double(), images[:4].double())
        step(model, images, plain=False)  # warm-up
        step(model, images, plain=True)
        calls = {path: functools.partial(step, model, images, path != "fused") for path in PATHS}
        medians = interleaved_medians(calls, args.repeats)
        rows.append((label, batch, size, medians, gaps))
        print(label, medians, gaps, flush=True)
    lines = [
        f"Machine: {machine()}; load average {before} before the run and {load_average()} "
        f"after it. Command: `{command_line('bench_fused.py', argv)}`.",
        "",
        "Forward and backward of a converted network (biases kept, norms frozen, train mode; "
        "random weights), the fused B-cos functions against every B-cos layer through plain "
        f"autograd, interleaved; medians of {args.repeats} repetitions after a warm-up. The "
        "gaps are the relative differences between the two paths' outputs and (the largest "
        "over the parameters) gradients, on 4 of the images in float64.",
        "",
        "| network | batch x px | fused s | plain autograd s | plain / fused | output gap "
        "| gradient gap |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, batch, size, medians, (out_gap, grad_gap) in rows:
        fused, plain = medians["fused"], medians["plain autograd"]
        lines.append(
            f"| {label} | {batch} x {size} | {fused:.2f} | {plain:.2f} | {plain / fused:.2f} "
            f"| {out_gap:.0e} | {grad_gap:.0e} |"
        )
    title = "## B-cos layers at B != 2: fused against plain autograd (`bench_fused.py`)"
    return publish(f"{title}\n\n" + "\n".join(lines), SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
