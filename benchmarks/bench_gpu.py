"""GPU benchmark: B-cos ResNet-50, ConvNeXt-T and ViT-B/16 against the originals.

For each model (torchvision architectures, random weights, 224 x 224 images), each precision
(float32; bfloat16 under ``torch.autocast``) and each execution mode (eager; compiled: the
original with ``torch.compile``, the B-cos model with ``bcosify.compile``), measured interleaved
in the same process:

- *layer*: forward+backward (input and weight gradients) of one of the model's typical layers,
  the B-cos layer against the plain one (ResNet-50: the 3 x 3 convolution of layer1;
  ConvNeXt-T: the depthwise 7 x 7 convolution of stage 1; ViT-B/16: the MLP's first linear
  layer over every token);
- *training step*: forward+backward of the summed logits in training mode (no optimiser);
- *explanation*: ``bcosify.explain`` of the predicted classes against one input-gradient pass of
  the original's predicted logits (what a plain gradient explanation costs), and against one
  input-gradient pass of the B-cos model itself.

Times are medians over the repetitions (CUDA synchronised around each call); throughput is
images (layer: calls) per second, and ``x`` is B-cos time / original time. It runs on CUDA when
available (``--device`` to choose). ``--quick`` is the smoke run of the test suite: tiny images
and batches, one block per stage, on the CPU, the ``eager`` compiler backend (graph capture
only), one repetition::

    .venv/bin/python benchmarks/bench_gpu.py --write docs/benchmarks.md
    .venv/bin/python benchmarks/bench_gpu.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torchvision
from common import command_line, load_average, machine, publish
from torch import Tensor, nn

import bcosify
from bcosify.nn import BcosConv2d, BcosLinear

SECTION = "bench_gpu"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "bf16")
MODES = ("eager", "compiled")
MODELS = ("resnet50", "convnext_tiny", "vit_b_16")


@dataclass(frozen=True)
class Setting:
    """Sizes of one run: images, batch, and the layer shapes' spatial size and token count."""

    size: int
    batch: int
    layer_size: int
    tokens: int


FULL = Setting(size=224, batch=32, layer_size=56, tokens=197)
QUICK = Setting(size=32, batch=2, layer_size=8, tokens=5)


def build_model(name: str, size: int, tiny: bool = False) -> nn.Module:
    """The torchvision architecture with random weights (nothing is downloaded).

    ``tiny``: the same model classes with one block per stage and narrow widths (the quick run).
    """
    torch.manual_seed(0)
    models = torchvision.models
    if not tiny:
        if name == "vit_b_16":
            return models.vit_b_16(image_size=size)
        return getattr(models, name)()
    if name == "resnet50":
        return models.resnet.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10)
    if name == "convnext_tiny":
        stages = [
            models.convnext.CNBlockConfig(16, 32, 1),
            models.convnext.CNBlockConfig(32, None, 1),
        ]
        return models.convnext.ConvNeXt(stages, num_classes=10)
    return models.vision_transformer.VisionTransformer(
        size, 16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def build_layers(name: str, setting: Setting) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """The plain and the B-cos version of the model's typical layer, and its input shape."""
    torch.manual_seed(0)
    batch, side = setting.batch, setting.layer_size
    plain: nn.Module
    if name == "resnet50":
        plain = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        shape: tuple[int, ...] = (batch, 64, side, side)
    elif name == "convnext_tiny":
        plain = nn.Conv2d(96, 96, 7, padding=3, groups=96, bias=False)
        shape = (batch, 96, side, side)
    else:
        plain = nn.Linear(768, 3072, bias=False)
        shape = (batch * setting.tokens, 768)
    if isinstance(plain, nn.Conv2d):
        return plain, BcosConv2d.from_conv(plain), shape
    return plain, BcosLinear.from_linear(plain), shape


def normalise(images: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def layer_step(layer: nn.Module, x: Tensor) -> None:
    x = x.detach().requires_grad_(True)
    out = layer(x)
    torch.autograd.grad(out.float().sum(), (x, layer.weight))


def training_step(model: nn.Module, x: Tensor) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(model(x).float().sum(), params)


def input_gradient(model: nn.Module, x: Tensor) -> None:
    """One input-gradient pass of the predicted logits, in evaluation mode."""
    model.eval()
    x = x.detach().requires_grad_(True)
    logits = model(x)
    torch.autograd.grad(logits.float().max(dim=1).values.sum(), x)


def explanation(model: nn.Module, x: Tensor) -> None:
    bcosify.explain(model, x, check="off")


@contextlib.contextmanager
def precision(name: str, device: torch.device) -> Iterator[None]:
    if name == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each call, the calls interleaved in every repetition (rotating)."""
    timed = timer(device)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(warmup + repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed(calls[name])
            if repeat >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def compiled(model: nn.Module, mode: str, backend: str) -> nn.Module:
    """The model itself (eager) or a compiled copy (``bcosify.compile`` compiles in place)."""
    if mode == "eager":
        return model
    return bcosify.compile(copy.deepcopy(model), backend=backend)


def measure(
    name: str,
    setting: Setting,
    device: torch.device,
    precisions: Sequence[str],
    modes: Sequence[str],
    backend: str,
    repeats: int,
    warmup: int,
) -> list[tuple[str, str, str, str, float, float, float]]:
    """Rows ``(model, precision, mode, measurement, original s, B-cos s, count per call)``."""
    original = build_model(name, setting.size, tiny=setting is QUICK).to(device)
    converted, _ = bcosify.convert(
        copy.deepcopy(original).eval(), input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD
    )
    converted = converted.to(device)
    plain_layer, bcos_layer, layer_shape = build_layers(name, setting)
    plain_layer, bcos_layer = plain_layer.to(device), bcos_layer.to(device)
    layer_input = torch.randn(layer_shape, device=device)
    images = torch.rand(setting.batch, 3, setting.size, setting.size, device=device)
    normalised = normalise(images)
    rows = []
    for mode in modes:
        for prec in precisions:
            torch._dynamo.reset()  # a fresh cache: compiled graphs never fall back to eager
            orig, bcos = compiled(original, mode, backend), compiled(converted, mode, backend)
            plain, ours = compiled(plain_layer, mode, backend), compiled(bcos_layer, mode, backend)
            calls: dict[str, Callable[[], object]] = {
                "layer_orig": functools.partial(layer_step, plain, layer_input),
                "layer_bcos": functools.partial(layer_step, ours, layer_input),
                "train_orig": functools.partial(training_step, orig, normalised),
                "train_bcos": functools.partial(training_step, bcos, images),
                "grad_orig": functools.partial(input_gradient, orig, normalised),
                "grad_bcos": functools.partial(input_gradient, bcos, images),
                "explain_bcos": functools.partial(explanation, bcos, images),
            }
            with precision(prec, device):
                t = interleaved(calls, repeats, warmup, device)
            n = setting.batch
            rows += [
                (name, prec, mode, "layer fwd+bwd", t["layer_orig"], t["layer_bcos"], 1),
                (name, prec, mode, "training step", t["train_orig"], t["train_bcos"], n),
                (name, prec, mode, "explanation", t["grad_orig"], t["explain_bcos"], n),
                (name, prec, mode, "explanation / B-cos gradient", t["grad_bcos"],
                 t["explain_bcos"], n),
            ]  # fmt: skip
            print(f"{name} {prec} {mode}: {t}", flush=True)
    return rows


def report(rows: Sequence[tuple], device: torch.device, setting: Setting, command: str) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Machine: {machine()}; device: {where}; load average {load_average()} at the end. "
        f"Command: `{command}`.",
        "",
        f"Images {setting.size} x {setting.size}, batch {setting.batch}; layers on "
        f"{setting.layer_size} x {setting.layer_size} maps or {setting.tokens} tokens per image. "
        "bf16 is `torch.autocast(dtype=torch.bfloat16)`; compiled is `torch.compile` (original) "
        "and `bcosify.compile` (B-cos). *explanation*: `bcosify.explain` against the original's "
        "input gradient; *explanation / B-cos gradient*: against one input-gradient pass of "
        "the B-cos model. Throughput in images (layers: calls) per second; x = B-cos time / "
        "original time.",
        "",
        "| model | precision | mode | measurement | original /s | B-cos /s | x |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for model, prec, mode, what, t_orig, t_bcos, count in rows:
        lines.append(
            f"| {model} | {prec} | {mode} | {what} | {count / t_orig:.1f} | "
            f"{count / t_bcos:.1f} | {t_bcos / t_orig:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"default {default_device}")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--batch", type=int, help=f"default {FULL.batch}")
    parser.add_argument("--repeats", type=int, default=10)
    # compiled models compile further graphs in the first two rounds of switching modes
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions (compiles)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke run, tiny sizes")
    parser.add_argument("--write", metavar="FILE", help="rewrite this script's section of FILE")
    args = parser.parse_args(argv)
    setting, device = FULL, torch.device(args.device)
    if args.quick:
        setting, device = QUICK, torch.device("cpu")
        args.backend, args.repeats, args.warmup = "eager", 1, 1
    if args.batch:
        setting = Setting(setting.size, args.batch, setting.layer_size, setting.tokens)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; use --device cpu or --quick")
    rows = []
    for name in args.models:
        rows += measure(
            name,
            setting,
            device,
            args.precisions,
            args.modes,
            args.backend,
            args.repeats,
            args.warmup,
        )
    text = report(rows, device, setting, command_line("bench_gpu.py", argv))
    return publish(
        f"## GPU benchmark: ResNet-50, ConvNeXt-T, ViT-B/16\n\n{text}", SECTION, args.write
    )


if __name__ == "__main__":
    raise SystemExit(main())
