"""``bcosify example``: train a tiny B-cos CNN in seconds and write its explanations.

A small, complete use of the core library: B-cos layers, a logit bias, explanation mode and
batched explanations with their completeness residual, and the pictures.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explain import (
    explain,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
    save_figure,
)
from ..nn import BcosConv2d, InputEncoding, LogitBias
from .arguments import output_folder

__all__ = ["add_parser", "shape_images", "tiny_bcos_cnn"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "example",
        help="train a tiny B-cos CNN on synthetic images and write its explanations",
        description=(
            "Train a tiny B-cos CNN to tell four shapes apart (seconds on a CPU), explain a "
            "batch of test images, print the completeness residuals and write colour "
            "explanations and contribution maps as PNGs."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("example-output"), help="output folder")
    parser.add_argument("--steps", type=int, default=250, help="training steps (default 250)")
    parser.add_argument("--images", type=int, default=6, help="images to explain (default 6)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the images and the weights (0)"
    )
    parser.set_defaults(run=run)


SHAPES = ("square", "horizontal bar", "vertical bar", "cross")


def shape_images(n: int, size: int = 32, generator: torch.Generator | None = None):
    """``n`` images in ``[0, 1]``: a bright shape of random colour and position on dark clutter.

    The class is the shape (see ``SHAPES``); colour and position carry no information.
    Returns the images ``(n, 3, size, size)`` and the labels ``(n,)`` in ``0..3``.

    Example:
        >>> images, labels = shape_images(4, generator=torch.Generator().manual_seed(0))
        >>> images.shape, labels.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    """
    images = torch.rand(n, 3, size, size, generator=generator) * 0.4
    labels = torch.randint(0, len(SHAPES), (n,), generator=generator)
    long, thin = size // 3, max(2, size // 12)
    boxes = {0: [(long, long)], 1: [(thin, long)], 2: [(long, thin)]}
    boxes[3] = boxes[1] + boxes[2]
    for i in range(n):
        top, left = torch.randint(0, size - long, (2,), generator=generator).tolist()
        colour = torch.rand(3, 1, 1, generator=generator) * 0.4 + 0.6
        for height, width in boxes[int(labels[i])]:
            y, x = top + (long - height) // 2, left + (long - width) // 2
            images[i, :, y : y + height, x : x + width] = colour
    return images, labels


def tiny_bcos_cnn(num_classes: int = 4) -> nn.Sequential:
    """A small B-cos CNN: encoding, B-cos convolutions, max pooling, a 1x1 head before pooling.

    Example:
        >>> tiny_bcos_cnn()(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """
    return nn.Sequential(
        InputEncoding(),
        BcosConv2d(6, 32, 3, padding=1),
        nn.MaxPool2d(2),
        BcosConv2d(32, 64, 3, padding=1),
        nn.MaxPool2d(2),
        BcosConv2d(64, 64, 3, padding=1),
        BcosConv2d(64, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        LogitBias.for_classes(num_classes),
    )


def _train(model: nn.Module, steps: int, generator: torch.Generator) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        images, labels = shape_images(64, generator=generator)
        targets = F.one_hot(labels, 4).float()
        loss = F.binary_cross_entropy_with_logits(model(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return float(loss.detach())


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def run(args: argparse.Namespace) -> int:
    out: Path = output_folder(args.out)  # a bad --out fails now, not after the training
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = tiny_bcos_cnn()
    print(f"training a tiny B-cos CNN for {args.steps} steps ...", flush=True)
    loss = _train(model, args.steps, generator)
    test_images, test_labels = shape_images(256, generator=generator)
    print(
        f"final training loss {loss:.4f}; test accuracy "
        f"{_accuracy(model, test_images, test_labels):.1%} (chance 25%)"
    )

    images, labels = test_images[: args.images], test_labels[: args.images]
    explanation = explain(model, images, target=labels)
    worst = float((explanation.residual.abs() / explanation.scores.abs().clamp_min(1)).max())
    print(
        f"explained {len(explanation)} images in one batch; completeness: "
        f"max |logit - contributions - constants| / max(1, |logit|) = {worst:.2e}"
    )
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(explanation)):
        scale = max(1, math.ceil(128 / images.shape[-1]))
        save_colour_explanation(
            out / f"{i}_colour.png", explanation.inputs[i], explanation.weights[i], upscale=scale
        )
        save_contribution_map(
            out / f"{i}_contributions.png", explanation.contribution_map[i], upscale=scale
        )
        figure = explanation_figure(explanation, i, class_names=SHAPES)
        save_figure(figure, out / f"{i}_figure.png", dpi=80)
    print(f"wrote colour explanations, contribution maps and figures to {out}/")
    return 0
