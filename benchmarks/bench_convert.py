"""Conversion time, and forward / training-step time of converted models against the originals.

For each architecture of the converter's test list, at 224 x 224 and batch 8: the time
``bcosify.convert`` takes, and the forward and forward+backward times of the original model, of
its B-cos version (B = 2, defaults), and of the same B-cos model flattened into one torch.fx
graph over the same layers (the form bcosify's converter produced before it kept the module
tree), measured interleaved in the same run (medians).

``--compiled`` measures the CNNs' training step compiled instead, in its own section: the
original with ``torch.compile``, the B-cos model with ``bcosify.compile`` (Inductor), beside
both eager models, interleaved in the same run.

    .venv/bin/python benchmarks/bench_convert.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/bench_convert.py --compiled --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import statistics
import time
from collections.abc import Sequence

import torch
from common import command_line, load_average, machine, publish, timed
from torch import fx, nn

import bcosify
from bcosify.convert.tracing import is_torch_builtin
from bcosify.models import create

SIGLIP = "transformers:SiglipVisionModel"  # siglip-base-patch16-224's shape, random weights
ARCHITECTURES = [
    "torchvision:resnet18",
    "torchvision:resnet50",
    "torchvision:resnext50_32x4d",
    "torchvision:wide_resnet50_2",
    "torchvision:densenet121",
    "torchvision:vgg11_bn",
    "torchvision:convnext_tiny",
    "torchvision:efficientnet_b0",
    "torchvision:mobilenet_v3_small",
    "torchvision:regnet_y_400mf",
    "timm:resnet18",
    "timm:convnext_atto",
    "timm:efficientnet_b0",
    "timm:convnextv2_atto",
    "timm:eva02_tiny_patch14_224",
    SIGLIP,
]
TRANSFORMERS = {"timm:eva02_tiny_patch14_224", SIGLIP}  # the rest are CNNs (the targets' set)
SECTION = "bench_convert"
COMPILED_SECTION = "bench_convert_compiled"
# targets from the speed issue: training step of every CNN at most 1.3x the original's, median
# at most 1.15x; bcosify.explain at most 1.1x one input-gradient pass of the same model
TRAIN_TARGET, MEDIAN_TARGET, EXPLAIN_TARGET = 1.3, 1.15, 1.1


def forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def training_step(model: nn.Module, x: torch.Tensor) -> None:
    model(x).sum().backward()
    model.zero_grad(set_to_none=True)


def explanation(model: nn.Module, x: torch.Tensor) -> None:
    bcosify.explain(model, x, check="off")


def input_gradient(model: nn.Module, x: torch.Tensor) -> None:
    """One input-gradient pass of the predicted logits: what an explanation costs at least."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits.max(dim=1).values.sum(), x)


class _LayersAsLeaves(fx.Tracer):
    """Traces through every container, down to the modules that have a conversion rule."""

    rules = tuple(bcosify.convert.default_rules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.rules) or is_torch_builtin(m)


def _defaults(module: nn.Module) -> dict[str, object]:
    """The forward's arguments after the image, at their defaults (timm's attn_mask=None)."""
    parameters = list(inspect.signature(type(module).forward).parameters.values())[2:]
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def flattened(model: bcosify.BcosModel) -> bcosify.BcosModel:
    """The converted model with its network as one fx graph over the same layer objects."""
    flat = copy.copy(model)
    flat._modules = dict(model._modules)
    graph = _LayersAsLeaves().trace(model.network, concrete_args=_defaults(model.network))
    flat._modules["network"] = fx.GraphModule(model.network, graph)
    return flat


class _PooledOutput(nn.Module):
    """A transformers vision model as a module of the images: its ``pooler_output``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).pooler_output


def build(
    name: str, size: int
) -> tuple[nn.Module, nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The original (called on normalised images), what to convert, and the normalisation."""
    if name == SIGLIP:
        import transformers

        config = transformers.SiglipVisionConfig(image_size=size, patch_size=16)
        vision = transformers.SiglipVisionModel(config)
        return _PooledOutput(vision), vision, (0.5,) * 3, (0.5,) * 3
    model = create(name, num_classes=1000)
    info = model.bcosify_source
    return model, model, info.input_mean, info.input_std


def inputs(
    batch: int, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images in [0, 1] (the B-cos model's input) and their normalised form (the
    original's)."""
    images = torch.rand(batch, 3, size, size)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return images, normalised


def measure(name: str, size: int, batch: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    original, source, mean, std = build(name, size)
    started = time.perf_counter()
    converted, _ = bcosify.convert(source.eval(), input_mean=mean, input_std=std)
    conversion = time.perf_counter() - started
    # after the conversion: source.eval() is the original itself for every model but SigLIP
    original.train()
    converted.train()
    images, normalised = inputs(batch, size, mean, std)
    candidates = {
        "original": (original, normalised),
        "bcos": (converted, images),
        "flat": (flattened(converted), images),
    }
    times: dict[str, list[float]] = {}
    for kind, fn in (("forward", forward), ("train", training_step)):
        for model, x in candidates.values():  # warm-up
            fn(model, x)
        for repeat in range(repeats):
            order = list(candidates) if repeat % 2 == 0 else list(reversed(candidates))
            for label in order:
                model, x = candidates[label]
                run = functools.partial(fn, model, x)
                times.setdefault(f"{label}_{kind}", []).append(timed(run))
    # bcosify.explain against one input-gradient pass of the same B-cos model (evaluation mode)
    converted.eval()
    pair = {"explain": explanation, "gradient": input_gradient}
    for fn in pair.values():  # warm-up
        fn(converted, images)
    for repeat in range(repeats):
        order = list(pair) if repeat % 2 == 0 else list(reversed(pair))
        for label in order:
            run = functools.partial(pair[label], converted, images)
            times.setdefault(f"bcos_{label}", []).append(timed(run))
    result = {key: statistics.median(values) for key, values in times.items()}
    result["conversion"] = conversion
    return result


def measure_compiled(name: str, size: int, batch: int, repeats: int) -> dict[str, float]:
    """Training step of the original and the B-cos model, each eager and compiled."""
    torch.manual_seed(0)
    original, source, mean, std = build(name, size)
    converted, _ = bcosify.convert(source.eval(), input_mean=mean, input_std=std)
    original.train()
    converted.train()
    images, normalised = inputs(batch, size, mean, std)
    torch._dynamo.reset()  # a fresh cache for every model: no graph falls back to eager
    candidates = {
        "original": (original, normalised),
        "bcos": (converted, images),
        "original_compiled": (copy.deepcopy(original), normalised),
        "bcos_compiled": (bcosify.compile(copy.deepcopy(converted)), images),
    }
    candidates["original_compiled"][0].compile()  # in place, as bcosify.compile does
    result = {}
    for label, (model, x) in candidates.items():  # warm-up; the compiled ones compile here
        result[f"{label}_first"] = timed(functools.partial(training_step, model, x))
    times: dict[str, list[float]] = {}
    for repeat in range(repeats):
        shift = repeat % len(candidates)
        order = list(candidates)[shift:] + list(candidates)[:shift]
        for label in order:
            model, x = candidates[label]
            times.setdefault(label, []).append(timed(functools.partial(training_step, model, x)))
    result.update({key: statistics.median(values) for key, values in times.items()})
    return result


def report_compiled(
    rows: dict[str, dict[str, float]], size: int, batch: int, repeats: int, command: str
) -> str:
    lines = [
        f"Machine: {machine()}; load average {load_average()} at the end. Command: `{command}`.",
        f"Images {size} x {size}, batch {batch}, train mode; training step = forward + backward "
        "of the summed logits (no optimiser). Compiled: the original with `torch.compile`, the "
        "B-cos model with `bcosify.compile`, default options (Inductor); *first call* is the "
        "first training step, which compiles (shorter for a graph in Inductor's on-disk cache "
        "from an earlier run). The four models are interleaved in every "
        f"repetition (rotating order); medians of {repeats} after the first call. The targets "
        "set each model in its faster mode (compiling made some originals slower).",
        "",
        "| model | first call orig (s) | first call B-cos (s) | eager orig (s) | eager B-cos (s) "
        "| compiled orig (s) | compiled B-cos (s) | B-cos/orig eager | B-cos/orig compiled "
        "| compiled B-cos / eager orig | faster B-cos / faster orig |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['original_compiled_first']:.0f} | {r['bcos_compiled_first']:.0f} | "
            f"{r['original']:.3f} | {r['bcos']:.3f} | {r['original_compiled']:.3f} | "
            f"{r['bcos_compiled']:.3f} | {r['bcos'] / r['original']:.2f}x | "
            f"{r['bcos_compiled'] / r['original_compiled']:.2f}x | "
            f"{r['bcos_compiled'] / r['original']:.2f}x | {_fastest_ratio(r):.2f}x |"
        )
    compiled = [_fastest_ratio(r) for r in rows.values()]
    eager = [r["bcos"] / r["original"] for r in rows.values()]
    lines += [
        "",
        f"Eager, same run: median {statistics.median(eager):.2f}x ({min(eager):.2f}x to "
        f"{max(eager):.2f}x).",
        "",
        f"- Target, compiled: every CNN's training step at most {TRAIN_TARGET}x the "
        f"original's (each in its faster mode): {_verdict(max(compiled) <= TRAIN_TARGET)} "
        f"({sum(ratio <= TRAIN_TARGET for ratio in compiled)} of {len(compiled)}, worst "
        f"{max(compiled):.2f}x).",
        f"- Target, compiled: median at most {MEDIAN_TARGET}x: "
        f"{_verdict(statistics.median(compiled) <= MEDIAN_TARGET)} "
        f"({statistics.median(compiled):.2f}x).",
    ]
    return "\n".join(lines)


def report(
    rows: dict[str, dict[str, float]], size: int, batch: int, repeats: int, command: str
) -> str:
    lines = [
        f"Machine: {machine()}; load average {load_average()} at the end. Command: `{command}`.",
        f"Images {size} x {size}, batch {batch}, train mode (batch statistics), B = 2 with the "
        f"default options; medians of {repeats} interleaved repetitions after a warm-up. "
        "Training step = forward + backward of the summed logits (no optimiser). B-cos is the "
        "converted model as `bcosify.convert` returns it (the original's module tree); flat is "
        "the same model traced into one fx graph over the same layers, as the converter built "
        "it before it kept the module tree. *explain* is `bcosify.explain` of the predicted "
        "classes (evaluation mode) against one input-gradient pass of the predicted logits of "
        "the same B-cos model.",
        "",
        "| model | convert (s) | fwd orig (s) | fwd B-cos (s) | B-cos/orig | B-cos/flat | "
        "fwd+bwd orig (s) | fwd+bwd B-cos (s) | B-cos/orig | B-cos/flat | "
        "explain (s) | explain/gradient |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['conversion']:.2f} | {r['original_forward']:.3f} | "
            f"{r['bcos_forward']:.3f} | {r['bcos_forward'] / r['original_forward']:.2f}x | "
            f"{r['bcos_forward'] / r['flat_forward']:.2f}x | "
            f"{r['original_train']:.3f} | {r['bcos_train']:.3f} | "
            f"{r['bcos_train'] / r['original_train']:.2f}x | "
            f"{r['bcos_train'] / r['flat_train']:.2f}x | {r['bcos_explain']:.3f} | "
            f"{r['bcos_explain'] / r['bcos_gradient']:.2f}x |"
        )
    ratios = [r["bcos_train"] / r["original_train"] for r in rows.values()]
    tree = [r["bcos_train"] / r["flat_train"] for r in rows.values()]
    forward = [r["bcos_forward"] / r["flat_forward"] for r in rows.values()]
    cnn = [r["bcos_train"] / r["original_train"] for n, r in rows.items() if n not in TRANSFORMERS]
    explain = [r["bcos_explain"] / r["bcos_gradient"] for r in rows.values()]
    lines += [
        "",
        f"Training step at most {TRAIN_TARGET}x the original's: "
        f"{sum(ratio <= TRAIN_TARGET for ratio in ratios)} of {len(ratios)} architectures "
        f"(median ratio {statistics.median(ratios):.2f}x).",
        "",
        f"- Target: every CNN's training step at most {TRAIN_TARGET}x the original's: "
        f"{_verdict(bool(cnn) and max(cnn) <= TRAIN_TARGET)} "
        f"({sum(ratio <= TRAIN_TARGET for ratio in cnn)} of {len(cnn)} CNNs"
        + (f", worst {max(cnn):.2f}x)." if cnn else ")."),
        f"- Target: median CNN training step at most {MEDIAN_TARGET}x: "
        + (
            f"{_verdict(statistics.median(cnn) <= MEDIAN_TARGET)} ({statistics.median(cnn):.2f}x)."
            if cnn
            else "no CNN measured."
        ),
        f"- Target: `bcosify.explain` at most {EXPLAIN_TARGET}x one input-gradient pass: "
        f"{_verdict(max(explain) <= EXPLAIN_TARGET)} (median {statistics.median(explain):.2f}x, "
        f"{min(explain):.2f}x to {max(explain):.2f}x).",
        "",
        "Module tree against "
        f"the flat graph: median {statistics.median(forward):.2f}x forward "
        f"({min(forward):.2f}x to {max(forward):.2f}x), {statistics.median(tree):.2f}x training "
        f"step ({min(tree):.2f}x to {max(tree):.2f}x).",
    ]
    return "\n".join(lines)


def _fastest_ratio(r: dict[str, float]) -> float:
    """The B-cos model's faster mode against the original's: compiling is not always faster."""
    return min(r["bcos"], r["bcos_compiled"]) / min(r["original"], r["original_compiled"])


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=ARCHITECTURES)
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    parser.add_argument(
        "--compiled", action="store_true", help="the CNNs' training step, compiled and eager"
    )
    args = parser.parse_args(argv)
    command = command_line("bench_convert.py", argv)
    if args.compiled:
        models = [name for name in args.models if name not in TRANSFORMERS]
        compiled_rows = {}
        for name in models:
            compiled_rows[name] = measure_compiled(name, args.size, args.batch, args.repeats)
            print(f"{name}: {compiled_rows[name]}", flush=True)
        text = report_compiled(compiled_rows, args.size, args.batch, args.repeats, command)
        title = "## Compiled CNNs against the compiled originals"
        return publish(f"{title}\n\n{text}", COMPILED_SECTION, args.write)
    rows = {}
    for name in args.models:
        rows[name] = measure(name, args.size, args.batch, args.repeats)
        print(f"{name}: {rows[name]}", flush=True)
    text = report(rows, args.size, args.batch, args.repeats, command)
    return publish(f"## Converted models against the originals\n\n{text}", SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
