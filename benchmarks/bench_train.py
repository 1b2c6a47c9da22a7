"""Training throughput: images per second of a training step, ordinary model vs its B-cos version.

Each step is forward, loss (cross-entropy for the ordinary model, the BCE recipe loss for the
B-cos model), backward and an AdamW update, on the same architecture and batch, interleaved.

    .venv/bin/python benchmarks/bench_train.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import torch
from common import command_line, interleaved_medians, machine, publish

from bcosify.models import create
from bcosify.train import get_recipe, prepare_model
from bcosify.train.losses import classification_loss

SECTION = "bench_train"
MODELS = {  # name -> (source, kwargs, image size)
    "bcosify:small_cnn (demo)": ("bcosify:small_cnn", {"widths": [8, 16, 32, 64, 64, 64]}, 64),
    "torchvision:resnet18": ("torchvision:resnet18", {}, 64),
    "torchvision:resnet50": ("torchvision:resnet50", {}, 128),
}


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_kind: str,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    classification_loss(loss_kind, model(images), labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    rows = []
    for label, (source, kwargs, size) in MODELS.items():
        torch.manual_seed(0)
        original = create(source, num_classes=10, **kwargs)
        candidates = {
            "standard": (prepare_model(original, get_recipe("standard")), "ce"),
            "B-cosified": (prepare_model(original, get_recipe("bcosify-cnn")), "bce"),
        }
        images = torch.rand(args.batch, 3, size, size)
        labels = torch.randint(0, 10, (args.batch,))
        steps = {}
        for name, (model, loss_kind) in candidates.items():
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            steps[name] = functools.partial(
                training_step, model, optimizer, loss_kind, images, labels
            )
            steps[name]()  # warm-up
        medians = interleaved_medians(steps, args.repeats)
        rows.append((label, size, {n: args.batch / t for n, t in medians.items()}))
        print(label, medians, flush=True)
    command = command_line("bench_train.py", argv)
    lines = [
        f"Machine: {machine()}. Command: `{command}`.",
        f"Batch {args.batch}, train mode, AdamW step included; medians of {args.repeats} "
        "interleaved repetitions after a warm-up.",
        "",
        "| model | image size | standard (img/s) | B-cosified (img/s) | B-cos / standard |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, size, speed in rows:
        lines.append(
            f"| {label} | {size} | {speed['standard']:.1f} | {speed['B-cosified']:.1f} "
            f"| {speed['B-cosified'] / speed['standard']:.2f} |"
        )
    return publish("## Training throughput\n\n" + "\n".join(lines), SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
