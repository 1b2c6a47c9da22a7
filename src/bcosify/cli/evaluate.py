"""``bcosify evaluate``: accuracy and explanation metrics of a model on a dataset."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..convert import BcosCLIP, BcosModel
from ..data import ALL_SHAPES, build_dataset, check_classes
from ..data.classes import format_classes
from ..device import check_device, default_device, device_of
from ..errors import DataError, EvaluationError, UsageError
from ..evaluate import (
    DEFAULT_TEMPLATES,
    EXPLAINER_NAMES,
    accuracy,
    build_explainer,
    class_embeddings,
    colour_fidelity_of_model,
    deletion_auc,
    grid_pointing_game,
    linear_probe,
    mask_localisation,
    zero_shot_evaluation,
)
from ..evaluate._common import has_bcos_layers
from ..explain import explain
from ..liveness import warn_if_constant
from ..models import class_names_of
from ..serialization import write_text
from ..train import Normalized
from ..train.prepare import input_normalization
from .arguments import apart_from_inputs, at_least, finite_float, output_file, positive_int
from .loading import image_size_for, load_model_argument

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="accuracy, grid pointing game, localisation and deletion AUC of a model",
        description="Evaluate a model (and explainers of it) on a dataset; print a table and "
        "write the numbers as JSON.",
    )
    parser.add_argument("--model", required=True, help="a saved model, a run folder or a source")
    parser.add_argument("--data", required=True, help="'synthetic' or an image folder")
    parser.add_argument(
        "--split",
        default="val",
        help="split of --data: a train/val/test sub-folder, or of the synthetic shapes (val)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="resize and centre-crop to this size (default: the size the model records, else 64)",
    )
    parser.add_argument("--num-examples", type=positive_int, help="synthetic data: examples")
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip (and count) unreadable images of a folder instead of stopping at the first",
    )
    parser.add_argument(
        "--explainers",
        nargs="*",
        help="default: bcos for a B-cos model, gradcam for an ordinary one",
    )
    parser.add_argument(
        "--grids", type=positive_int, default=25, help="2x2 grids for the pointing game"
    )
    parser.add_argument(
        "--images", type=positive_int, default=32, help="images for localisation/deletion"
    )
    parser.add_argument(
        "--threshold",
        type=_probability,
        default=0.5,
        help="pointing game: the confidence an image needs to enter a grid (default 0.5)",
    )
    parser.add_argument(
        "--smooth",
        type=at_least(0),
        default=0,
        metavar="K",
        help="pointing game and localisation: average every explainer's map over K x K windows "
        "before scoring, so that all are compared at one resolution (the official B-cos "
        "evaluation uses 15 at 224 px); default 0: per pixel",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per forward pass (32)"
    )
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:<index> (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the pointing-game grids and of RISE (0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.add_argument(
        "--templates",
        nargs="+",
        default=list(DEFAULT_TEMPLATES),
        help="B-cos CLIP models: prompt templates for zero-shot classification, each with {} "
        "for the class name",
    )
    parser.add_argument(
        "--probe-split",
        help="also fit a linear probe (a logistic regression on the frozen features: the image "
        "embeddings of a CLIP model, the classifier's input otherwise) on this split, e.g. "
        "train, and score it on --split",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        output_file(args.out)
        apart_from_inputs(args.out, {"--model": args.model, "--data": args.data})
    if args.explainers:
        unknown = sorted(set(args.explainers) - set(EXPLAINER_NAMES))
        if unknown:
            raise UsageError(
                f"--explainers: unknown {', '.join(unknown)}; choose from "
                f"{', '.join(EXPLAINER_NAMES)}"
            )
    device = check_device(args.device) if args.device else default_device()
    model = load_model_argument(str(args.model), None, None).eval().to(device)
    args.image_size = image_size_for(model, args.image_size) or 64
    data = _dataset(args)
    if isinstance(model, BcosCLIP):
        return _zero_shot(model, data, args)
    data = _with_the_models_classes(model, data, args)
    is_bcos = isinstance(model, BcosModel) or has_bcos_layers(model)
    if not isinstance(model, BcosModel):
        model = Normalized(model, *input_normalization(model)).eval().to(device)
    results: dict[str, Any] = {
        **_header(args, device),
        "accuracy": accuracy(
            model, data, batch_size=args.batch_size, progress=not args.no_progress
        ),
        **_probes({"model": model}, data, args),
    }
    names = args.explainers or (["bcos"] if is_bcos else ["gradcam"])
    images, labels, masks = _first_items(data, args.images)
    with torch.no_grad():
        warn_if_constant(model(images[: args.batch_size].to(device)), f"the model {args.model}")
    rows = []
    for name in names:
        options = {"seed": args.seed} if name == "rise" else {}
        explainer = build_explainer(name, model, **options)
        entry: dict[str, Any] = {}
        steps = 1 + math.ceil(len(images) / args.batch_size)
        with tqdm(total=steps, desc=name, unit="step", disable=args.no_progress) as bar:
            bar.set_postfix_str(f"pointing game, {args.grids} grids")
            try:
                entry["pointing_game_2x2"] = grid_pointing_game(
                    model,
                    explainer,
                    data,
                    n=2,
                    num_grids=args.grids,
                    threshold=args.threshold,
                    smooth=args.smooth,
                    seed=args.seed,
                    batch_size=args.batch_size,
                ).mean
            except EvaluationError as error:
                entry["pointing_game_2x2"], entry["pointing_game_error"] = None, str(error)
            bar.update()
            bar.set_postfix_str(f"localisation and deletion, {len(images)} images")
            tic = time.perf_counter()
            parts = []
            for start in range(0, len(images), args.batch_size):
                batch = slice(start, start + args.batch_size)
                parts.append(explainer.attribute(images[batch], labels[batch]))
                bar.update()
            attributions = torch.cat(parts)
            entry["seconds_per_image"] = (time.perf_counter() - tic) / len(images)
        entry["deletion_auc"] = float(
            deletion_auc(model, images, labels, attributions, batch_size=args.batch_size).mean()
        )
        if masks is not None:
            inside = mask_localisation(attributions, masks, smooth=args.smooth)
            entry["mask_localisation"] = float(inside.mean())
        results.setdefault("explanations", {})[name] = entry
        rows.append((name, entry))
    if is_bcos:
        results["colour_fidelity"] = _colour(model, images, labels, masks, args.batch_size)
    top = results["accuracy"]
    print(f"accuracy: top-1 {top['top1']:.2%}, top-5 {top['top5']:.2%}")
    print(f"{'explainer':<22}{'pointing 2x2':>14}{'in mask':>10}{'deletion':>10}{'ms/img':>9}")
    for name, entry in rows:
        game = entry["pointing_game_2x2"]
        print(
            f"{name:<22}{'n/a' if game is None else f'{game:.3f}':>14}"
            f"{entry.get('mask_localisation', float('nan')):>10.3f}"
            f"{entry['deletion_auc']:>10.3f}{1000 * entry['seconds_per_image']:>9.1f}"
        )
    if args.smooth > 1:
        k = args.smooth
        print(f"(pointing game and in mask: every map averaged over {k} x {k} windows first)")
    for name, entry in rows:
        if entry.get("pointing_game_error"):
            print(f"{name}: no pointing game: {entry['pointing_game_error']}")
    if is_bcos:
        colour = results["colour_fidelity"]
        print(
            f"colour fidelity: no measure: {colour['error']}"
            if "error" in colour
            else f"colour fidelity: error {colour['colour_error']:.3f} (colours shuffled between "
            f"images: {colour['shuffled_control']:.3f}; the pixels' own colours rounded to 0 or "
            f"1: {colour['rounded_reference']:.3f}; 0 is the pixels' own colours) over "
            f"{colour['images']} correctly classified images"
            + (", inside their masks" if masks is not None else "")
        )
    _write(results, args.out)
    return 0


def _colour(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    batch_size: int,
) -> dict[str, Any]:
    """Colour fidelity of a B-cos model's explanations on the images it classifies correctly."""
    try:
        fidelity = colour_fidelity_of_model(model, images, labels, masks, batch_size=batch_size)
    except EvaluationError as error:
        return {"error": str(error)}
    return {
        "colour_error": fidelity.mean,
        "shuffled_control": float(fidelity.shuffled.mean()),
        "rounded_reference": float(fidelity.rounded.mean()),
        "images": len(fidelity.error),
    }


def _probability(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text}")
    return value


def _header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """What was evaluated and how: enough to repeat the run."""
    return {
        "bcosify_version": __version__,
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "settings": {
            "image_size": args.image_size,
            "num_examples": args.num_examples,
            "images": args.images,
            "grids": args.grids,
            "threshold": args.threshold,
            "smooth": args.smooth,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": str(device),
            "explainers": args.explainers,
            "templates": args.templates,
            "probe_split": args.probe_split,
        },
    }


def _dataset(
    args: argparse.Namespace, classes: list[str] | None = None, split: str | None = None
) -> Any:
    """``--split`` (or ``split``) of ``--data``, never augmented: evaluation sees the images."""
    return build_dataset(
        args.data,
        split or args.split,
        args.image_size,
        num_examples=args.num_examples,
        return_mask=args.data == "synthetic",
        skip_corrupt=args.skip_corrupt,
        augment=False,
        classes=classes,
    )


@torch.no_grad()
def _with_the_models_classes(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> Any:
    """The data with labels that are the model's class indices, or a :class:`DataError`.

    A model with class names takes a dataset of the same classes, or (an image folder) of some
    of them, whose labels are then renumbered to the model's; the synthetic shapes are rendered
    with the model's classes when they are shapes. A model without names must have one output
    per class of the data.
    """
    classes = getattr(data, "classes", None)
    if classes is None:
        return data
    classes = [str(c) for c in classes]
    names = class_names_of(model)
    if names is not None:
        is_folder = args.data != "synthetic"
        if not is_folder and set(names) <= set(ALL_SHAPES):  # perhaps other shapes (the demo's)
            return data if classes == names else _dataset(args, names)
        check_classes(names, classes, "the model", "the data", subset=is_folder)
        return data if classes == names else _dataset(args, names)
    outputs = model(data[0][0][None]).shape[-1]
    if outputs != len(classes):
        raise DataError(
            f"the model has {outputs} outputs (and no class names) but the data has "
            f"{format_classes(classes)}: evaluate it on data of the classes it was trained on"
        )
    return data


def _zero_shot(model: BcosCLIP, data: Any, args: argparse.Namespace) -> int:
    """Zero-shot top-1 of the original and the B-cos tower; on data with masks, how much of the
    explanation of each image's similarity with its class's text lies inside the mask."""
    zero_shot = zero_shot_evaluation(
        model, data, templates=args.templates, batch_size=args.batch_size
    )
    results: dict[str, Any] = {
        **_header(args, device_of(model)),
        "zero_shot": {"teacher": zero_shot.teacher, "student": zero_shot.student},
        "templates": list(zero_shot.templates),
    }
    print(zero_shot)
    results.update(_probes({"teacher": model.original, "student": model}, data, args))
    images, labels, masks = _first_items(data, args.images)
    if masks is not None:
        classes = class_embeddings(model.encode_text, data.classes, args.templates)
        e = explain(model, images, target=classes[labels])
        inside = float(mask_localisation(e.contributions, masks, smooth=args.smooth).mean())
        results["mask_localisation"] = inside
        print(f"class-prompt explanations: {inside:.3f} of the positive contribution in the mask")
    _write(results, args.out)
    return 0


def _probes(
    models: dict[str, torch.nn.Module], data: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """``{"linear_probe": {name: result}}`` with ``--probe-split``, else nothing."""
    if args.probe_split is None:
        return {}
    if args.probe_split == args.split:
        raise DataError(
            f"--probe-split {args.probe_split} is the evaluated split: fit the probe on another "
            "split (e.g. --probe-split train)"
        )
    classes = getattr(data, "classes", None)
    train = _dataset(args, None if classes is None else [str(c) for c in classes], args.probe_split)
    probes = {}
    for name, model in models.items():
        probes[name] = linear_probe(model, train, data, batch_size=args.batch_size, seed=args.seed)
        print(f"{name}: {probes[name]}")
    return {"linear_probe": {name: vars(result) for name, result in probes.items()}}


def _first_items(data: Any, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images, labels and (when the data has them) masks of the first ``count`` examples."""
    items = [data[i] for i in range(min(count, len(data)))]
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items])
    masks = torch.stack([item[2] for item in items]) if len(items[0]) > 2 else None
    return images, labels, masks


def _write(results: dict[str, Any], out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
