"""CLIP benchmark: a small CLIP on captioned shapes, B-cosified and distilled from itself.

Run it as::

    .venv/bin/python benchmarks/bench_clip.py --write docs/benchmarks.md

1. Data: the synthetic shapes (``bcosify.data.SyntheticShapes``) with captions made from their
   labels: ``"a photo of a <colour> <shape>."`` for half of the examples, where the colour is
   the name of the palette colour nearest to the object's mean colour under its mask (the
   colour is random and independent of the shape), ``"a photo of a <shape>."`` for the others.
2. Teacher: an open_clip ``CLIP`` (a small ``ModifiedResNet`` image tower with attention
   pooling, a small text transformer, open_clip's tokenizer) trained from scratch with the
   contrastive CLIP loss; images with the same caption are all positives of that caption.
3. Students: ``bcosify.convert.convert_clip`` (B = 2, the default options), distilled from the
   frozen teacher with ``bcosify.train.distill`` (cosine loss, labels unused), once starting
   from the teacher's weights and once from random weights (recipe ``model="bcos-scratch"``),
   with the same budget.
4. Evaluation on the test split: zero-shot top-1 with class embeddings from the teacher's text
   tower (``bcosify.evaluate.zero_shot_evaluation``, default templates, the shape names), the
   cosine similarity of student and teacher embeddings, and the localisation of text-prompted
   explanations: each image is explained for the cosine similarity with its true class's text
   embedding, and the share of positive contribution inside the object mask is measured
   (``bcosify.evaluate.mask_localisation``). For reference: Input x Gradient of the same
   similarity on the teacher, and the mask's share of the image (what a uniform map scores).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import command_line, machine, publish
from torch import Tensor, nn
from torch.utils.data import Dataset

import bcosify
from bcosify.convert import BcosCLIP, convert_clip
from bcosify.data import SHAPES, SyntheticShapes
from bcosify.evaluate import (
    DEFAULT_TEMPLATES,
    class_embeddings,
    linear_probe,
    mask_localisation,
    zero_shot_accuracy,
)
from bcosify.models.clip import ClipModel, as_clip
from bcosify.train import align, distill, get_recipe

SECTION = "bench_clip"

# Named colours for the captions: the caption names the one nearest to the object's mean colour.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.12),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.25, 0.85),
    "purple": (0.55, 0.20, 0.75),
    "pink": (0.95, 0.50, 0.70),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
    "brown": (0.50, 0.30, 0.12),
}

COLOUR_TEMPLATES = tuple(f"a photo of a {colour} {{}}." for colour in PALETTE)


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of a run."""

    image_size: int = 64
    num_train: int = 4000
    num_test: int = 500
    num_explained: int = 200
    embed_dim: int = 64
    vision_width: int = 16
    text_width: int = 64
    text_layers: int = 2
    teacher_epochs: int = 20
    teacher_lr: float = 3e-3
    distill_epochs: int = 3
    distill_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


QUICK = Settings(
    image_size=32,
    num_train=64,
    num_test=32,
    num_explained=8,
    embed_dim=16,
    vision_width=8,
    text_width=16,
    text_layers=1,
    teacher_epochs=1,
    distill_epochs=1,
    batch_size=32,
)


class Rendered(Dataset):
    """Pre-rendered shapes (8 bits a channel, lossless for this data): image, label, mask."""

    def __init__(self, shapes: SyntheticShapes) -> None:
        examples = [shapes.example(i) for i in range(len(shapes))]
        self.images = torch.stack([(e[0] * 255).round().to(torch.uint8) for e in examples])
        self.labels = torch.tensor([e[1] for e in examples])
        self.masks = torch.stack([e[2] for e in examples])
        self.classes = list(shapes.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float() / 255, int(self.labels[index])

    def batch(self, indices: Tensor) -> Tensor:
        return self.images[indices].float() / 255


def colour_name(image: Tensor, mask: Tensor) -> str:
    """The palette colour nearest to the mean colour of ``image`` under ``mask``."""
    mean = image[:, mask].mean(1)
    names = list(PALETTE)
    distances = (torch.tensor([PALETTE[n] for n in names]) - mean).norm(dim=1)
    return names[int(distances.argmin())]


def captions(data: Rendered) -> list[str]:
    """``a photo of a <colour> <shape>.`` for every other run of one example per class, and
    ``a photo of a <shape>.`` for the others (as real captions do not always name colours)."""
    texts = []
    for i in range(len(data)):
        shape = data.classes[int(data.labels[i])]
        if (i // len(data.classes)) % 2:
            texts.append(f"a photo of a {shape}.")
        else:
            colour = colour_name(data.batch(torch.tensor([i]))[0], data.masks[i])
            texts.append(f"a photo of a {colour} {shape}.")
    return texts


def build_teacher(settings: Settings) -> nn.Module:
    heads = max(1, settings.vision_width * 32 // 64)
    vision = {
        "layers": [1, 1, 1, 1],
        "width": settings.vision_width,
        "head_width": settings.vision_width * 32 // heads,
        "image_size": settings.image_size,
    }
    text = {
        "context_length": 12,
        "width": settings.text_width,
        "heads": max(1, settings.text_width // 32),
        "layers": settings.text_layers,
    }
    return bcosify.models.create(
        "open_clip:RN50", embed_dim=settings.embed_dim, vision_cfg=vision, text_cfg=text
    )


def train_teacher(model: nn.Module, data: Rendered, settings: Settings) -> float:
    """Contrastive training; every image's positive is its caption, every caption's positives
    are its images. Returns the seconds it took."""
    clip = as_clip(model)
    texts = captions(data)
    distinct = sorted(set(texts))
    caption_of = torch.tensor([distinct.index(t) for t in texts])
    tokens = clip.tokenize(distinct)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.teacher_lr, weight_decay=0.05)
    steps = settings.teacher_epochs * (len(data) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.teacher_lr, steps)
    generator = torch.Generator().manual_seed(settings.seed)
    started = time.perf_counter()
    model.train()
    for epoch in range(settings.teacher_epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - settings.batch_size + 1, settings.batch_size):
            indices = order[start : start + settings.batch_size]
            batch_captions, positive = caption_of[indices].unique(return_inverse=True)
            image = F.normalize(clip.encode_image(data.batch(indices)), dim=-1)
            text = F.normalize(model.encode_text(tokens[batch_captions]), dim=-1)
            logits = model.logit_scale.exp() * image @ text.T
            targets = F.one_hot(positive, len(batch_captions)).float()
            loss = F.cross_entropy(logits, positive) + F.cross_entropy(
                logits.T, targets.T / targets.T.sum(1, keepdim=True)
            )
            optimizer.zero_grad(set_to_none=True)
            (loss / 2).backward()
            optimizer.step()
            schedule.step()
        print(f"  teacher epoch {epoch + 1}: loss {loss.item() / 2:.3f}", file=sys.stderr)
    model.eval()
    return time.perf_counter() - started


def teacher_input_x_gradient(clip: ClipModel, images: Tensor, texts: Tensor) -> Tensor:
    """Input x Gradient of the teacher's cosine similarity with ``texts``, per pixel."""
    x = images.detach().clone().requires_grad_(True)
    score = F.cosine_similarity(clip(x), texts, dim=1).sum()
    (gradient,) = torch.autograd.grad(score, x)
    return (gradient * x).detach()


def localisation(
    model: nn.Module, images: Tensor, masks: Tensor, texts: Tensor
) -> tuple[float, float]:
    """Mean share of positive contribution inside the mask for the similarity with ``texts``
    (one per image), and the largest completeness residual (NaN for the teacher)."""
    if isinstance(model, BcosCLIP):
        e = bcosify.explain(model, images, target=texts)
        maps, residual = e.contributions, float(e.residual.abs().max())
    else:
        maps, residual = teacher_input_x_gradient(model, images, texts), math.nan
    return float(mask_localisation(maps, masks).mean()), residual


def cosine_to_teacher(student: BcosCLIP, data: Rendered) -> float:
    with torch.no_grad():
        images = data.batch(torch.arange(len(data)))
        return float(F.cosine_similarity(student(images), student.original(images)).mean())


def distil(
    start: BcosCLIP,
    data: Rendered,
    settings: Settings,
    scratch: bool,
    out: Path,
    features: bool = False,
) -> tuple[BcosCLIP, float]:
    """Distil (the embeddings only) or, with ``features``, align (features at three depths of
    the tower and the embeddings) a student from the teacher."""
    recipe = get_recipe(
        "bcosify-aloe" if features else "bcosify-clip",
        model="bcos-scratch" if scratch else "bcosify",
        epochs=settings.distill_epochs,
        batch_size=settings.batch_size,
        lr=settings.distill_lr,
        image_size=settings.image_size,
        augment="none",
        seed=settings.seed,
        checkpoint_every=10**6,
    )
    started = time.perf_counter()
    train = align if features else distill
    result = train(copy.deepcopy(start), data, out, recipe=recipe, loss="cosine", progress=False)
    return result.model.eval(), time.perf_counter() - started


def run(settings: Settings) -> dict[str, object]:
    torch.manual_seed(settings.seed)
    render = time.perf_counter()
    shapes = {
        split: SyntheticShapes(n, settings.image_size, seed=settings.seed, split=split)
        for split, n in (("train", settings.num_train), ("test", settings.num_test))
    }
    train, test = Rendered(shapes["train"]), Rendered(shapes["test"])
    probe_train = torch.utils.data.Subset(train, range(min(len(train), 2000)))
    print(f"  rendered in {time.perf_counter() - render:.0f} s", file=sys.stderr)
    teacher = build_teacher(settings)
    teacher_seconds = train_teacher(teacher, train, settings)

    converted, _ = convert_clip(teacher)
    same, _ = convert_clip(teacher, b=1.0, keep_bias=True)
    images = test.batch(torch.arange(min(len(test), settings.num_explained)))
    with torch.no_grad():
        reference = same.original(images)
        equivalence = float((same(images) - reference).norm() / reference.norm())
    with tempfile.TemporaryDirectory() as runs:
        warm, warm_seconds = distil(converted, train, settings, False, Path(runs) / "warm")
        cold, cold_seconds = distil(converted, train, settings, True, Path(runs) / "cold")
        aligned, aligned_seconds = distil(
            converted, train, settings, False, Path(runs) / "aligned", features=True
        )

    # the default templates, and the same ensembled over every colour word of the captions
    templates = {"default": DEFAULT_TEMPLATES, "colour": COLOUR_TEMPLATES}
    classes = {
        k: class_embeddings(converted.encode_text, test.classes, t) for k, t in templates.items()
    }
    explained = torch.arange(len(images))
    masks, labels = test.masks[explained], test.labels[explained]
    prompts = {
        "caption": converted.encode_text(captions(test)[: len(images)]),
        "class": classes["colour"][labels],
    }
    rows = {}
    for name, model, seconds in (
        ("teacher (original image tower)", converted.original, teacher_seconds),
        ("B-cos, converted, not distilled", converted, 0.0),
        ("B-cos, distilled from the teacher's weights", warm, warm_seconds),
        ("B-cos, distilled from random weights", cold, cold_seconds),
        ("B-cos, aligned (features at 3 depths and embeddings)", aligned, aligned_seconds),
    ):
        row: dict[str, float] = {"seconds": seconds}
        row["probe"] = linear_probe(model, probe_train, test).top1
        for kind, embeddings in classes.items():
            row[f"top1 {kind}"] = zero_shot_accuracy(model, embeddings, test)["top1"]
        row["cosine"] = cosine_to_teacher(model, test) if isinstance(model, BcosCLIP) else 1.0
        residuals = []
        for kind, texts in prompts.items():
            row[f"inside {kind}"], residual = localisation(model, images, masks, texts)
            residuals.append(residual)
        row["residual"] = max(residuals)  # NaN for the teacher
        rows[name] = row
    return {
        "rows": rows,
        "equivalence": equivalence,
        "mask_share": float(masks.float().mean()),
        "captions": len(set(captions(train))),
    }


def report(results: dict[str, Any], settings: Settings, command: str) -> str:
    rows: dict[str, dict[str, float]] = results["rows"]
    lines = [
        "| image tower | zero-shot top-1, default templates | zero-shot top-1, colour "
        "templates | linear probe | cosine to teacher | inside mask, own caption | inside mask, "
        "class prompt | training s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['top1 default']:.1%} | {row['top1 colour']:.1%} | "
            f"{row['probe']:.1%} | {row['cosine']:.3f} | {row['inside caption']:.3f} | "
            f"{row['inside class']:.3f} | {row['seconds']:.0f} |"
        )
    residual = max(r["residual"] for r in rows.values() if not math.isnan(r["residual"]))
    s = settings
    return "\n".join(
        [
            "## CLIP benchmark: a small CLIP on captioned shapes, B-cosified and distilled",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine()}. Other processes may have run at the same time.",
            "",
            f"Data: synthetic shapes at {s.image_size} x {s.image_size} ({len(SHAPES)} shapes, "
            f"random colour, clutter), {s.num_train} training and {s.num_test} test images; "
            "captions `a photo of a <colour> <shape>.` for half of the images and `a photo of a "
            f"<shape>.` for the others ({results['captions']} distinct), the colour named after "
            f"the nearest of {len(PALETTE)} palette colours to the object's mean colour.",
            "",
            "Teacher: open_clip `CLIP` with a `ModifiedResNet` image tower (layers [1, 1, 1, 1], "
            f"width {s.vision_width}, attention pooling) and a {s.text_layers}-layer text "
            f"transformer of width {s.text_width}, embeddings of {s.embed_dim}; trained from "
            f"scratch for {s.teacher_epochs} epochs (AdamW, one-cycle lr {s.teacher_lr}, batch "
            f"{s.batch_size}) with the contrastive loss. Its B-cos conversion at B = 1 with "
            f"biases reproduces its image embeddings to {results['equivalence']:.1e} relative.",
            "",
            "Students: `convert_clip(teacher)` (B = 2, fold encoding, no biases), distilled with "
            f"`bcosify.train.distill` (cosine loss, {s.distill_epochs} epochs, AdamW lr "
            f"{s.distill_lr}, cosine schedule, batch {s.batch_size}, no augmentation) from the "
            'teacher\'s weights, and from random weights (`model="bcos-scratch"`); and aligned '
            "with `bcosify.train.align` (recipe `bcosify-aloe`: 1 - cosine on the tower's "
            "features at three depths and on the embeddings) from the teacher's weights, with "
            "the same budget; the same training images, labels unused. *Linear probe*: a "
            "logistic regression on the frozen embeddings (`bcosify.evaluate.linear_probe`, "
            "at most 2000 training images, L2 penalty chosen on a held-out fifth).",
            "",
            "Zero-shot: top-1 on the test split (`bcosify.evaluate.zero_shot_accuracy`) with "
            "class embeddings from the teacher's text tower for the shape names, with the default "
            "templates (`bcosify.evaluate.DEFAULT_TEMPLATES`) and with `a photo of a <colour> "
            "{}.` for every palette colour. *Inside mask*: "
            f"the first {s.num_explained} test images are explained for the cosine similarity "
            "with a text embedding, their own caption or their class's (colour templates), and "
            "the share of positive contribution inside the object mask is averaged; the "
            "teacher's row is Input x Gradient of the same similarity, a uniform map scores the "
            f"mask's share of the image, {results['mask_share']:.3f}. Largest completeness "
            f"residual of the B-cos explanations (similarity - contributions - constants): "
            f"{residual:.1e}, for similarities in [-1, 1].",
            "",
            *lines,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FILE", help="rewrite this script's section of FILE")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny, meaningless")
    for field, value in asdict(Settings()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    overrides = {k: v for k, v in vars(args).items() if k in asdict(settings) and v is not None}
    settings = replace(settings, **overrides)
    started = time.perf_counter()
    results = run(settings)
    command = command_line("bench_clip.py", argv)
    text = report(results, settings, command)
    text += f"\n\nTotal time: {time.perf_counter() - started:.0f} s."
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
