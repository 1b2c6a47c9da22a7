"""What makes B-cosified explanations show objects in their own colours: levers, over seeds.

On the demo's task (``bcosify demo``'s default preset), the original is trained once per seed
(cached in ``.bench/colour``), then B-cosified and fine-tuned once per lever: B, fine-tuning
length, the learning rate, weight decay, the activations, a wider network, larger images, a first
layer made of colour templates, the paper's encoding, max pooling converted to average pooling, a
first layer that learns 30 times as fast, a loss that asks for alignment outright, and the same
B-cos architecture from scratch (with the demo's budget, and trained well).
For each: test accuracy, colour fidelity (:func:`bcosify.evaluate.colour_fidelity`, inside the
object masks, with its shuffled control) and the 2x2 pointing game of the B-cos explanation
against occlusion (the strongest post-hoc method of the demo) on the same model, with the B-cos
explanation also summed over occlusion's windows (the two at the same resolution). Also
reported: how much of the first layer's weight lies in the directions ``[d, -d]`` of the encoded
input ``[x, 1 - x]`` (the colour read out of those is 0 or 1 per channel, whatever the pixel).

    .venv/bin/python benchmarks/bench_colour.py --jobs 2 --write docs/benchmarks.md

``--jobs 2`` runs two levers at a time, each in its own process on one thread.
"""

from __future__ import annotations

import argparse
import colorsys
import copy
import datetime
import json
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from common import command_line, in_processes, load_average, machine, publish
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from bcosify import convert
from bcosify.demo import PRESETS
from bcosify.demo.evaluation import Evaluation
from bcosify.demo.settings import DemoSettings
from bcosify.demo.training import Trainer, datasets, train_original
from bcosify.evaluate import colour_fidelity_of_model, correct
from bcosify.nn import BcosConv2d, ExplanationTrace, explanation_mode
from bcosify.train import get_recipe, prepare_model, train
from bcosify.train.losses import classification_loss
from bcosify.train.prepare import input_normalization
from bcosify.train.validation import validate

SECTION = "bench_colour"


@dataclass(frozen=True)
class Lever:
    """One way of making the B-cosified model: recipe fields, demo settings (a wider network
    or larger images train their own original), a fresh B-cos model instead of the original's
    weights (with ``max_out`` MaxOut units in its hidden convolutions), the first layer turned
    into colour templates before fine-tuning, the encoding of the conversion, the first layer's
    learning rate multiplied, ``align`` the weight of an alignment term added to the loss
    (:class:`Alignment`), or the task: ``"hue"`` labels each image by its object's hue instead
    of its shape (a control: a task whose evidence is the object's colour)."""

    recipe: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    scratch: bool = False
    max_out: int = 1
    templates: bool = False
    encoding: str = "fold"
    first_layer_lr: float = 1.0
    align: float = 0.0
    task: str = "shapes"


# every lever keeps the network's max pooling (the recipes' default) unless it says otherwise
LEVERS = {
    "max pooling kept, B = 2, 5 epochs, lr 3e-3 (demo defaults until 2026-12-08)": Lever(),
    "B = 3": Lever({"b": 3.0}),
    "B = 5": Lever({"b": 5.0}),
    "15 epochs": Lever({"epochs": 15}),
    "lr 1e-2": Lever({"lr": 1e-2}),
    "weight decay 0.05": Lever({"weight_decay": 0.05}),
    "no activations (B-cos v2 design)": Lever({"activations": "identity"}),
    "first layer as colour templates": Lever(templates=True),
    "wider: widths 32, 32, 64, 64": Lever(settings={"widths": (32, 32, 64, 64)}),
    "64 px images": Lever(settings={"image_size": 64}),
    "paper encoding ([W, -W] / 2 behind a normalisation)": Lever(encoding="paper"),
    "max pooling converted to average pooling (demo default since 2026-12-08)": Lever(
        {"maxpool": "avg"}
    ),
    "first layer's learning rate x 30": Lever(first_layer_lr=30.0),
    # alignment asked for outright, at two strengths: how far colour moves and what it costs
    "alignment term in the loss, weight 0.1": Lever(align=0.1),
    "alignment term in the loss, weight 1": Lever(align=1.0),
    "B-cos from scratch (8 epochs, lr 1e-3)": Lever({"epochs": 8, "lr": 1e-3}, scratch=True),
    # what a B-cos model shows on this task when it is trained well: more accurate than the
    # original (the demo's from-scratch budget leaves it at under 40%)
    "B-cos from scratch trained well (widths 32, 64, 128, 128; 30 epochs; BCE)": Lever(
        {"epochs": 30, "lr": 1e-3, "loss": "bce"},
        settings={"widths": (32, 64, 128, 128)},
        scratch=True,
    ),
    # the B-cos v1 design: two MaxOut units instead of each ReLU
    "B-cos from scratch with MaxOut (2 units, no ReLU; 30 epochs; BCE)": Lever(
        {"epochs": 30, "lr": 1e-3, "loss": "bce", "activations": "identity"},
        scratch=True,
        max_out=2,
    ),
    "control: the object's hue as the class, B-cos from scratch (15 epochs; BCE)": Lever(
        {"epochs": 15, "lr": 1e-3, "loss": "bce"}, scratch=True, task="hue"
    ),
}

HUES = 6


class ByHue(Dataset):
    """The demo's images and masks, each labelled by the hue of its object's mean colour (one of
    :data:`HUES` equal sectors of the colour wheel) instead of its shape."""

    def __init__(self, shapes: Dataset) -> None:
        self.shapes = shapes
        self.targets: list[int] = []
        for index in range(len(shapes)):
            image, _, mask = shapes[index]
            red, green, blue = image[:, mask.bool()].mean(1).tolist()
            hue = colorsys.rgb_to_hsv(red, green, blue)[0]
            self.targets.append(int(hue * HUES) % HUES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, _, mask = self.shapes[index]
        return image, self.targets[index], mask


def first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if getattr(m, "weight", None) is not None)


def antisymmetric_share(model: nn.Module) -> float:
    """The share of the first layer's squared weight in the directions ``[d, -d]``."""
    weight = first_conv(model).weight.detach()
    half = (weight[:, :3] - weight[:, 3:]) / 2
    return float(2 * half.pow(2).sum() / weight.pow(2).sum())


def as_colour_templates(model: nn.Module) -> None:
    """Give every tap of the first layer the symmetric part that makes both of its halves
    non-negative: ``[d + l, l - d]`` with ``l = max |d|`` over the colours, so that the tap reads
    as the colour ``0.5 + d / 2l``. The input-independent part this adds changes the function."""
    conv = first_conv(model)
    with torch.no_grad():
        half = (conv.weight[:, :3] - conv.weight[:, 3:]) / 2
        level = half.abs().amax(1, keepdim=True)
        conv.weight.copy_(torch.cat([half + level, level - half], 1))


class _Scaled(nn.Module):
    """``weight = factor * v``: Adam's steps on ``v`` move the weight ``factor`` times as far."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.factor * v

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / self.factor


def start_model(
    lever: Lever, original: nn.Module | None, trainer: Trainer, recipe: Any
) -> nn.Module:
    """The model the lever fine-tunes (a fresh one without ``original``): converted here when
    the lever changes the conversion or the converted first layer, or its :class:`Alignment`
    must hold the model that trains (else ``train`` converts it as the demo does)."""
    if original is None:
        fresh = trainer.architecture()
        if lever.max_out == 1:
            return fresh  # train converts it and initialises it afresh
        fresh = prepare_model(fresh, recipe)
        features = fresh.network.features
        for index, layer in enumerate(features):
            if isinstance(layer, BcosConv2d):
                shape = (layer.in_channels, layer.out_channels, layer.kernel_size)
                units = {"b": recipe.b, "max_out": lever.max_out}
                features[index] = BcosConv2d(*shape, padding=layer.padding, **units)
        return fresh
    start = copy.deepcopy(original)
    if lever.encoding != "fold":
        mean, std = input_normalization(start)
        start = convert(start, input_mean=mean, input_std=std, b=recipe.b, encoding=lever.encoding)
        start = start.model
    elif lever.templates or lever.first_layer_lr != 1 or lever.align:
        start = prepare_model(start, recipe)
    if lever.templates:
        as_colour_templates(start)
    if lever.first_layer_lr != 1:
        parametrize.register_parametrization(
            first_conv(start), "weight", _Scaled(lever.first_layer_lr)
        )
    return start


class Alignment:
    """The recipe's classification loss plus ``weight * (1 - cos(W(x), [x, 1 - x]))``, the
    cosine between each image's dynamic weights for its label and its encoded input: alignment
    asked for outright rather than left to B (a second backward pass through ``W(x)``)."""

    def __init__(self, model: nn.Module, loss: str, weight: float) -> None:
        self.model, self.loss, self.weight = model, loss, weight

    def __call__(
        self, outputs: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        # a second forward pass: explanation mode detaches the dynamic factors, through which
        # the classification loss (on ``outputs``) must still train
        with ExplanationTrace(self.model) as trace, explanation_mode(self.model):
            scores = self.model(images).gather(1, labels[:, None])
        encoded = trace.encoded_input
        (weights,) = torch.autograd.grad(scores.sum(), encoded, create_graph=True)
        cosine = F.cosine_similarity(weights.flatten(1), encoded.flatten(1), dim=1)
        loss = classification_loss(self.loss, outputs, labels)
        return loss + self.weight * (1 - cosine).mean()

    def validate(
        self, model: nn.Module, data: Dataset, *, batch_size: int, dist: Any
    ) -> dict[str, Any]:
        return validate(model, data, batch_size=batch_size, dist=dist)

    def progress(self, fraction: float) -> None:
        pass  # no schedule of its own


def measure(s: DemoSettings, model: nn.Module, test: Any, images: int) -> dict[str, Any]:
    model.eval()
    items = [test[i] for i in range(images)]
    x = torch.stack([item[0] for item in items])
    y = torch.tensor([item[1] for item in items])
    masks = torch.stack([item[2] for item in items])
    fidelity = colour_fidelity_of_model(model, x, y, masks, batch_size=images)
    evaluation = Evaluation(s, test)
    runs = {
        method: evaluation.run(model, "B-cosified", method, {}) for method in ("bcos", "occlusion")
    }
    games = {method: run["pointing_game"]["2x2"].get("mean") for method, run in runs.items()}
    coarse = runs["bcos"]["pointing_game_at_occlusion_windows"].get("2x2", {}).get("mean")
    return {
        "accuracy": float(correct(model, test, batch_size=s.batch_size).float().mean()),
        "colour_error": fidelity.mean,
        "shuffled": float(fidelity.shuffled.mean()),
        "rounded": float(fidelity.rounded.mean()),
        "antisymmetric": antisymmetric_share(model),
        "pointing_bcos": games["bcos"],
        "pointing_bcos_windows": coarse,
        "pointing_occlusion": games["occlusion"],
    }


ORIGINALS = Path(".bench/colour")
# every lever's latest result per seed: a run of some levers rewrites the table with them all
RESULTS = ORIGINALS / "results.json"


def lever_settings(lever: Lever, seed: int) -> DemoSettings:
    return replace(PRESETS["default"], seed=seed, grids=50, grid_sizes=(2,), **lever.settings)


def cache_original(lever: Lever, seed: int, work: Path) -> None:
    """Train (or find) the original the lever starts from, in the cache the levers share."""
    s = lever_settings(lever, seed)
    train_original(s, Trainer(s, datasets(s), work, progress=False), ORIGINALS)


def run_lever(lever: Lever, seed: int, work: Path, images: int) -> dict[str, Any]:
    s = lever_settings(lever, seed)
    data: dict[str, Any] = datasets(s)
    if lever.task == "hue":
        data = {split: ByHue(shapes) for split, shapes in data.items()}
        s = replace(s, classes=HUES)
    trainer = Trainer(s, data, work, progress=False)
    original = None if lever.scratch else train_original(s, trainer, ORIGINALS)[0]
    fields = {"epochs": s.finetune_epochs, "lr": s.lr_finetune, **lever.recipe}
    recipe = get_recipe(
        "bcos-scratch" if lever.scratch else "bcosify-cnn",
        batch_size=s.batch_size,
        image_size=s.image_size,
        seed=seed,
        checkpoint_every=10**9,
        **fields,
    )
    start = start_model(lever, original, trainer, recipe)
    objective = Alignment(start, recipe.loss, lever.align) if lever.align else None
    result = train(
        start,
        data["train"],
        recipe,
        work / f"seed-{seed}",
        val_data=data["val"],
        progress=False,
        resume=False,
        log_every=10**9,
        objective=objective,
    )
    return measure(s, result.model, data["test"], images)


def spread(values: Sequence[float | None], digits: int = 3, percent: bool = False) -> str:
    kept = [v for v in values if v is not None]
    if not kept:
        return "n/a"

    def form(value: float) -> str:
        return f"{value:.1%}" if percent else f"{value:.{digits}f}"

    text = form(statistics.fmean(kept))
    return text + (f" ({form(min(kept))} to {form(max(kept))})" if len(kept) > 1 else "")


def report(
    results: dict[str, list[dict[str, Any]]], seeds: Sequence[int], command: str, loads: tuple
) -> str:
    dates = sorted({run["date"] for runs in results.values() for run in runs})
    lines = [
        f"## Colour of B-cosified explanations: levers (`bench_colour.py`, seeds "
        f"{', '.join(map(str, seeds))})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}; 1-minute load average {loads[0]} before and {loads[1]} after "
        f"the last run. Measured on {', '.join(dates)}: a run of some levers (`--levers`) "
        "keeps the others' latest results (`.bench/colour/results.json`).",
        "",
        "The demo's task and network (default preset), one original per seed; each lever "
        "B-cosifies and fine-tunes it (or trains from scratch). Colour error: the mean "
        "|explanation colour - pixel colour| over each correctly classified test image's "
        "strongest fifth of positive evidence inside the object (0: the object in its own "
        "colours; the goal is 0.10), and two references on the same pixels: colours shuffled "
        "between images, and the pixels' own colours rounded to 0 or 1 per channel (what "
        "weights with every channel's side right but no input-independent part score). "
        "Pointing game: 50 2x2 grids, the B-cos explanation and occlusion on the same model, "
        "and the B-cos explanation summed over the windows occlusion moves (half a cell, "
        "by their width): the same explanation at occlusion's resolution. "
        "[d, -d] share: how much of the first layer's weight lies in directions whose colour "
        "reads as 0 or 1 per channel. Each cell: the mean over the seeds (lowest to highest).",
        "",
        "| lever | top-1 | colour error | shuffled | rounded | [d, -d] share | "
        "pointing 2x2: B-cos | B-cos over occlusion's windows | occlusion |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():

        def column(key: str, runs: list[dict[str, Any]] = runs) -> list[float | None]:
            return [r[key] for r in runs]

        lines.append(
            f"| {name} | {spread(column('accuracy'), percent=True)} | "
            f"{spread(column('colour_error'))} | {spread(column('shuffled'))} | "
            f"{spread(column('rounded'))} | "
            f"{spread(column('antisymmetric'))} | {spread(column('pointing_bcos'))} | "
            f"{spread(column('pointing_bcos_windows'))} | {spread(column('pointing_occlusion'))} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levers", nargs="+", choices=tuple(LEVERS), default=tuple(LEVERS))
    parser.add_argument("--images", type=int, default=200, help="test images for the colours")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="levers run at once, each in its own process with one thread (1: here, on --threads)",
    )
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = load_average()
    work = Path(tempfile.mkdtemp(prefix="bcosify-colour-"))
    levers = [(name, seed) for name in args.levers for seed in args.seeds]
    # the originals first, each trained once, so that no two processes train the same one
    firsts = {
        (tuple(sorted(LEVERS[n].settings.items())), seed): n
        for n, seed in levers
        if not LEVERS[n].scratch
    }
    originals = [
        (LEVERS[name], seed, work / "originals" / str(index))
        for index, ((_, seed), name) in enumerate(firsts.items())
    ]
    list(in_processes(cache_original, originals, args.jobs))
    jobs = [
        (LEVERS[name], seed, work / str(index), args.images)
        for index, (name, seed) in enumerate(levers)
    ]
    outcomes = list(in_processes(run_lever, jobs, args.jobs))
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    today = datetime.date.today().isoformat()
    for (name, seed), result in zip(levers, outcomes, strict=True):
        stored.setdefault(name, {})[str(seed)] = {**result, "date": today}
        print(f"{name}, seed {seed}: {result}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=1) + "\n")
    # every lever with runs of these seeds, this run's and the ones stored before
    results = {
        name: [stored[name][str(seed)] for seed in args.seeds if str(seed) in stored[name]]
        for name in LEVERS
        if name in stored
    }
    command = command_line("bench_colour.py", argv)
    text = report(results, args.seeds, command, (before, load_average()))
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
