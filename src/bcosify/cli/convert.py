"""``bcosify convert``: convert a pretrained model and save it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from torch.utils.data import Dataset, Subset

from ..convert import BcosCLIP, BcosModel, convert
from ..data import build_dataset
from ..errors import UsageError
from ..folders import hold_folder
from ..models import source_info
from .arguments import apart_from_inputs, finite_float, output_folder, positive_int
from .loading import load_model_argument

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a pretrained model into a B-cos model and save it",
        description=(
            "Convert a pretrained model into a B-cos model with the same weights, print what "
            "was replaced, and save it (model.safetensors + config.json) for bcosify.load."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a source (torchvision:resnet50, timm:resnet18), or a saved ordinary model folder "
        "(bcosify train --recipe standard writes one)",
    )
    parser.add_argument(
        "--weights",
        help="a weights file (.safetensors, or a state dict .pt/.pth), a torchvision weight "
        "name such as IMAGENET1K_V2 (downloads if not cached), or 'hub' for timm (downloads)",
    )
    parser.add_argument(
        "--num-classes", type=positive_int, help="number of classes of the architecture"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to save the model to")
    parser.add_argument("--b", type=float, default=2.0, help="B of the B-cos layers (default 2)")
    parser.add_argument(
        "--encoding",
        choices=("fold", "paper"),
        default="fold",
        help="fold: the input normalisation folded into the first layer for [x, 1 - x] (exact, "
        "the default); paper: a normalisation layer in front, as published (its offset a "
        "constant of every explanation)",
    )
    parser.add_argument(
        "--maxpool",
        choices=("keep", "avg"),
        default="keep",
        help="keep max pooling (default), or replace it by average pooling as the published "
        "code does",
    )
    parser.add_argument(
        "--activations",
        choices=("keep", "identity"),
        default="keep",
        help="keep the activations in their dynamic-linear forms (default), or replace them by "
        "identities",
    )
    parser.add_argument("--keep-bias", action="store_true", help="keep biases (equivalence checks)")
    parser.add_argument(
        "--classifier-after-pool",
        action="store_true",
        help="keep the classifier after global pooling (default: move it before)",
    )
    parser.add_argument(
        "--mean", type=finite_float, nargs="+", help="input mean (default: the source's)"
    )
    parser.add_argument(
        "--std", type=finite_float, nargs="+", help="input std (default: the source's)"
    )
    parser.add_argument(
        "--calibrate",
        type=positive_int,
        metavar="N",
        help="rescale the converted model on N images of --data (no labels), so that it is "
        "usable in evaluation mode before any fine-tuning (bcosify.calibrate)",
    )
    parser.add_argument(
        "--data",
        default="synthetic",
        help="images for --calibrate: 'synthetic' or an image folder (default: synthetic)",
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=224, help="image size for --calibrate"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)
    data = args.data if args.calibrate is not None else None
    apart_from_inputs(args.out, {"--model": args.model, "--weights": args.weights, "--data": data})
    original = load_model_argument(args.model, args.weights, args.num_classes)
    if isinstance(original, (BcosModel, BcosCLIP)):
        raise UsageError(f"{args.model} is a B-cos model already: there is nothing to convert")
    _check_normalisation(args, original)
    model, report = convert(
        original,
        input_mean=args.mean,
        input_std=args.std,
        b=args.b,
        encoding=args.encoding,
        keep_bias=args.keep_bias,
        maxpool=args.maxpool,
        activations=args.activations,
        classifier_before_pool=not args.classifier_after_pool,
        calibrate=_calibration_images(args),
    )
    print(report)
    with hold_folder(args.out):
        directory = model.save_pretrained(args.out)
    print(f"saved to {directory}/ (load with bcosify.load({str(directory)!r}))")
    return 0


def _calibration_images(args: argparse.Namespace) -> Dataset | None:
    """N images of --data for --calibrate (the validation split when there is one)."""
    if args.calibrate is None:
        return None
    split = "val" if args.data == "synthetic" or (Path(args.data) / "val").is_dir() else "."
    data = build_dataset(
        args.data, split, args.image_size, num_examples=args.calibrate, augment=False
    )
    return Subset(data, range(min(args.calibrate, len(data))))


def _check_normalisation(args: argparse.Namespace, original: object) -> None:
    """--mean and --std: one value per input channel (the source's count), std positive."""
    info = source_info(original)  # type: ignore[arg-type]
    channels = len(info.input_mean) if info else None
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and channels is not None and len(values) != channels:
            raise UsageError(
                f"{flag} takes one value per input channel ({channels} for {args.model}), got "
                f"{len(values)}: {' '.join(map(str, values))}"
            )
    if args.std is not None and not all(s > 0 and math.isfinite(s) for s in args.std):
        raise UsageError(f"--std must be positive, got {' '.join(map(str, args.std))}")
