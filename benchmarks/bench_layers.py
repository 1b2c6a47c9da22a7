"""Layer benchmark: ``nn.Conv2d`` against our ``BcosConv2d`` and the official ``bcos`` layer.

Run it with ``make bench-layers``, which installs the official package (``bcos==0.1.3``, without
its dependencies) into ``.bench/official`` and then runs (from the repository root)::

    .venv/bin/python benchmarks/bench_layers.py
        --official .bench/official --write docs/benchmarks.md

Without ``--official`` the official layer is left out; ``--quick`` is a smoke run.

For each ResNet-50 convolution shape it measures, for every candidate layer in the same process:

- forward time: one forward pass with autograd recording (input and weight require grad, as in
  training or when explaining);
- forward+backward time: that forward plus the backward pass for the input and weight gradients;
- saved memory: the bytes of the tensors autograd keeps for the backward pass, collected with
  ``torch.autograd.graph.saved_tensors_hooks`` and counted once per storage. The input and the
  weight are saved by every candidate (a plain convolution needs them too), so the report also
  gives what a layer keeps *beyond* them.

The machine may be noisy: the candidates are interleaved inside every repetition (their order
rotates), and the median over the repetitions after warm-up is reported. Ratios are relative to
``nn.Conv2d``. Before timing, the script checks that our layer and the official one compute the
same function on unit-norm weights, so that like is compared with like.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import command_line, load_average, machine, publish, timed
from torch import Tensor, nn

from bcosify.nn import BcosConv2d

SECTION = "bench_layers"
CONV = "nn.Conv2d"
OURS = "bcosify BcosConv2d"
OFFICIAL = "bcos 0.1.3 BcosConv2d"
# targets from the speed issue: ours at most this multiple of nn.Conv2d (forward+backward) ...
TARGET_RATIO = 1.1
# ... and the official layer at least this multiple of ours
OFFICIAL_TARGET = 1.25


@dataclass(frozen=True)
class LayerShape:
    """One convolution to benchmark: input ``batch x c_in x size x size``, square kernel."""

    name: str
    batch: int
    size: int
    c_in: int
    c_out: int
    kernel: int
    padding: int

    def describe(self) -> str:
        return (
            f"{self.batch}x{self.c_in}x{self.size}x{self.size}, "
            f"{self.c_in}->{self.c_out}, {self.kernel}x{self.kernel}, pad {self.padding}"
        )


RESNET50_SHAPES = (
    LayerShape("layer1 3x3", 32, 56, 64, 64, 3, 1),
    LayerShape("layer2 3x3", 32, 28, 128, 128, 3, 1),
    LayerShape("layer3 3x3", 32, 14, 256, 256, 3, 1),
    LayerShape("layer4 1x1", 32, 7, 512, 512, 1, 0),
)


@dataclass
class Result:
    """The measurements of one layer on one shape (times in seconds, memory in bytes)."""

    shape: LayerShape
    layer: str
    forward: list[float] = field(default_factory=list)
    forward_backward: list[float] = field(default_factory=list)
    saved_bytes: int = 0
    extra_bytes: int = 0

    @property
    def forward_median(self) -> float:
        return statistics.median(self.forward)

    @property
    def forward_backward_median(self) -> float:
        return statistics.median(self.forward_backward)


def load_official(folder: str | Path) -> type[nn.Module]:
    """Import ``bcos.modules.bcosconv2d.BcosConv2d`` from a ``pip install --target`` folder.

    ``import bcos.modules`` runs ``bcos/__init__.py``, which imports the whole package (data
    presets, models, pretrained entry points: torchvision, PIL, ...). The layer itself only needs
    torch and numpy, so the two package levels are registered as bare namespace modules and only
    the layer's own files (``modules/bcosconv2d.py``, ``modules/common.py``, ``common.py``) run.
    """
    root = Path(folder).resolve() / "bcos"
    if not (root / "modules" / "bcosconv2d.py").is_file():
        raise FileNotFoundError(
            f"no official bcos package in {folder} (expected {root}/modules/bcosconv2d.py); "
            "install it with: pip install --no-deps --target .bench/official bcos==0.1.3"
        )
    if "bcos" in sys.modules:
        loaded = Path(getattr(sys.modules["bcos"], "__path__", [""])[0]).resolve()
        if loaded != root:
            raise RuntimeError(f"another bcos package is already imported from {loaded}")
    for name, path in (("bcos", root), ("bcos.modules", root / "modules")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    module = importlib.import_module("bcos.modules.bcosconv2d")
    return module.BcosConv2d


def make_layers(
    shape: LayerShape, official: type[nn.Module] | None, dtype: torch.dtype = torch.float32
) -> dict[str, nn.Module]:
    """The candidates, all with the same unit-norm weights (so they compute the same function)."""
    geometry = {"kernel_size": shape.kernel, "padding": shape.padding}
    conv = nn.Conv2d(shape.c_in, shape.c_out, bias=False, dtype=dtype, **geometry)
    with torch.no_grad():
        conv.weight /= conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    ours = BcosConv2d(shape.c_in, shape.c_out, b=2.0, dtype=dtype, **geometry)
    layers: dict[str, nn.Module] = {CONV: conv, OURS: ours}
    with torch.no_grad():
        ours.weight.copy_(conv.weight)
    if official is not None:
        theirs = official(shape.c_in, shape.c_out, b=2, max_out=1, dtype=dtype, **geometry)
        with torch.no_grad():
            theirs.linear.weight.copy_(conv.weight)
        layers[OFFICIAL] = theirs
    return layers


def check_agreement(layers: dict[str, nn.Module], x: Tensor) -> None:
    """Our layer and the official one must compute the same function (unit-norm weights)."""
    if OFFICIAL not in layers:
        return
    with torch.no_grad():
        ours, theirs = layers[OURS](x), layers[OFFICIAL](x)
    if not torch.allclose(ours, theirs, rtol=1e-3, atol=1e-5):
        error = (ours - theirs).abs().max().item()
        raise AssertionError(f"our BcosConv2d and the official one disagree (max error {error})")


def weights(layer: nn.Module) -> list[Tensor]:
    return [p for p in layer.parameters() if p.requires_grad]


def run_forward(layer: nn.Module, x: Tensor) -> Tensor:
    return layer(x)


def run_forward_backward(layer: nn.Module, x: Tensor, grad: Tensor) -> None:
    # torch.autograd.grad: no accumulation into .grad, so every call does the same work
    torch.autograd.grad(layer(x), [x, *weights(layer)], grad)


def saved_for_backward(layer: nn.Module, x: Tensor) -> tuple[int, int]:
    """Bytes autograd keeps for the backward pass: all of them, and those beyond input and weights.

    Every tensor saved for backward goes through the pack hook; tensors that share a storage
    (views, the same tensor saved twice) are counted once, at the storage's size.
    """
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = layer(x)
    del out
    own = {t.untyped_storage().data_ptr() for t in [x, *layer.parameters()]}
    total = sum(storages.values())
    extra = sum(size for ptr, size in storages.items() if ptr not in own)
    return total, extra


def rotated(items: Sequence[str], by: int) -> Iterator[str]:
    shift = by % len(items)
    yield from (*items[shift:], *items[:shift])


def benchmark_shape(
    shape: LayerShape, official: type[nn.Module] | None, repeats: int, warmup: int
) -> list[Result]:
    """Measure every candidate on one shape, interleaving them inside each repetition."""
    torch.manual_seed(0)
    layers = make_layers(shape, official)
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, requires_grad=True)
    check_agreement(layers, x)
    with torch.no_grad():
        grad = torch.randn_like(layers[CONV](x))
    results = {name: Result(shape, name) for name in layers}
    for name, layer in layers.items():
        results[name].saved_bytes, results[name].extra_bytes = saved_for_backward(layer, x)
    names = list(layers)
    for repetition in range(warmup + repeats):
        for name in rotated(names, repetition):
            layer = layers[name]
            forward = timed(lambda layer=layer: run_forward(layer, x))
            both = timed(lambda layer=layer: run_forward_backward(layer, x, grad))
            if repetition >= warmup:
                results[name].forward.append(forward)
                results[name].forward_backward.append(both)
    return list(results.values())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table(results: Sequence[Result]) -> str:
    """A markdown table: milliseconds as median (fastest), ratios of medians, memory in MiB."""
    lines = [
        "| shape | layer | forward ms | x conv | fwd+bwd ms | x conv | saved MiB | x conv "
        "| beyond input+weight MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = {r.shape: r for r in results if r.layer == CONV}
    for r in results:
        base = baseline[r.shape]
        lines.append(
            f"| {r.shape.name}: {r.shape.describe()} | {r.layer} "
            f"| {milliseconds(r.forward)} | {r.forward_median / base.forward_median:.2f} "
            f"| {milliseconds(r.forward_backward)} "
            f"| {r.forward_backward_median / base.forward_backward_median:.2f} "
            f"| {mib(r.saved_bytes)} | {r.saved_bytes / base.saved_bytes:.2f} "
            f"| {mib(r.extra_bytes)} |"
        )
    return "\n".join(lines)


def milliseconds(times: Sequence[float]) -> str:
    return f"{statistics.median(times) * 1e3:.1f} ({min(times) * 1e3:.1f})"


def verdicts(results: Sequence[Result]) -> list[str]:
    """One line per target from the issue, over all shapes."""
    by_shape: dict[LayerShape, dict[str, Result]] = {}
    for r in results:
        by_shape.setdefault(r.shape, {})[r.layer] = r
    worst = max(
        layers[OURS].forward_backward_median / layers[CONV].forward_backward_median
        for layers in by_shape.values()
    )
    met = "met" if worst <= TARGET_RATIO else "NOT met"
    lines = [
        f"- Target: our forward+backward at most {TARGET_RATIO}x nn.Conv2d: {met} "
        f"(worst shape {worst:.2f}x)."
    ]
    if all(OFFICIAL in layers for layers in by_shape.values()):
        speedups = [
            layers[OFFICIAL].forward_backward_median / layers[OURS].forward_backward_median
            for layers in by_shape.values()
        ]
        met = "met" if min(speedups) >= OFFICIAL_TARGET else "NOT met"
        lines.append(
            f"- Target: ours at least {OFFICIAL_TARGET}x faster than the official layer "
            f"(forward+backward): {met} "
            f"(official / ours from {min(speedups):.2f}x to {max(speedups):.2f}x)."
        )
    return lines


def report(
    results: Sequence[Result], repeats: int, warmup: int, command: str, loads: tuple[str, str]
) -> str:
    return "\n".join(
        [
            "## Layer benchmark: B-cos convolution against nn.Conv2d",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine()}; 1-minute load average {loads[0]} before the run and "
            f"{loads[1]} after it (other processes may have run at the same time).",
            "",
            "Layers: `nn.Conv2d(bias=False)`, `bcosify.nn.BcosConv2d(b=2)` and, when installed, "
            "the official `bcos.modules.BcosConv2d(b=2, max_out=1)` from `bcos==0.1.3` (which "
            "always divides its weights by their norm). All get the same unit-norm weights, and "
            "the script first checks that the two B-cos layers give the same output.",
            "",
            "Method: float32, input and weight require grad. *forward* is one forward pass with "
            "autograd recording; *fwd+bwd* is that forward plus `torch.autograd.grad` for the "
            "input and weight gradients; each timing includes freeing what the call allocated. "
            "The candidates are interleaved in every repetition "
            f"(rotating order); warm-up repetitions: {warmup}, then the median of {repeats} "
            "(in brackets: the fastest repetition, the least disturbed by other processes); "
            "the ratios and the targets use the medians. "
            "*saved MiB* is the memory autograd keeps for the backward pass: every tensor "
            "passed to the pack hook of `torch.autograd.graph.saved_tensors_hooks`, counted once "
            "per storage at the storage's size. The input and weight (saved by every layer, "
            "nn.Conv2d included) are part of it; the last column is what is kept beyond them.",
            "",
            table(results),
            "",
            *verdicts(results),
        ]
    )


def main(argv: Sequence[str] | None = None, shapes: Sequence[LayerShape] | None = None) -> int:
    """Run the benchmark; ``shapes`` replaces the ResNet-50 shapes (tests use tiny ones)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official", metavar="DIR", help="folder holding the official bcos package"
    )
    parser.add_argument("--write", metavar="FILE", help="rewrite this script's section of FILE")
    parser.add_argument("--repeats", type=int, default=21, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions, 1 warm-up")
    args = parser.parse_args(argv)
    repeats, warmup = (2, 1) if args.quick else (args.repeats, args.warmup)
    official = load_official(args.official) if args.official else None
    results: list[Result] = []
    load_before = load_average()
    for shape in shapes or RESNET50_SHAPES:
        print(f"benchmarking {shape.name}: {shape.describe()}", file=sys.stderr, flush=True)
        results.extend(benchmark_shape(shape, official, repeats, warmup))
    command = command_line("bench_layers.py", argv)
    text = report(results, repeats, warmup, command, (load_before, load_average()))
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
