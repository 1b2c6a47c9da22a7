"""``bcosify train``: train or fine-tune a model with a recipe, on one process or under torchrun."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..convert import BcosCLIP, BcosModel, BcosTextModel, calibrate
from ..data import ImageFolderDataset, UnlabelledImages, build_dataset, held_out_split
from ..data.text import TextFileDataset
from ..device import check_device
from ..errors import CheckpointError, ModelSourceError, UsageError
from ..models.clip import as_clip
from ..models.text import TextClassifier, load_tokenizer, save_tokenizer
from ..train import DISTILLATION_LOSSES, Recipe, RecipeError, align, get_recipe, train
from ..train.checkpoint import CHECKPOINT_FILE
from ..train.prepare import prepare_model
from ..train.resume import RESUMABLE_CHANGES
from .arguments import apart_from_inputs, output_folder, positive_float, positive_int
from .loading import load_model_argument

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train or B-cosify-and-fine-tune a model with a recipe",
        description=(
            "Train with a recipe (standard, bcosify-cnn, bcosify-vit, bcos-scratch; for text "
            "classifiers bcosify-lm), or distil a "
            "B-cosified CLIP image tower from the original (bcosify-clip: --model is a CLIP "
            "model, --data any folder of images), or B-cosify a classifier without labels "
            "(bcosify-align: --data any folder of images, no classes; with --time-budget the run "
            "ends, its model written, when the time is spent). Resumes from the checkpoint in "
            "--out if there is one (with the same recipe and data; "
            + ", ".join(RESUMABLE_CHANGES[:4])
            + " may change, e.g. a lower --lr after a divergence). Under torchrun (torchrun "
            "--nproc_per_node=N -m bcosify train ...) it trains with DDP. Exits 0 when finished "
            "or stopped by --max-steps, 130 / 143 when stopped by SIGINT / SIGTERM (resume with "
            "the same command), 1 when the run failed, 2 for a bad command line."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a source (torchvision:resnet18, timm:...) or a saved model folder",
    )
    parser.add_argument("--weights", help="weights for a source model (file or weight name)")
    parser.add_argument(
        "--data",
        required=True,
        help="'synthetic', an image folder, or a .jsonl / .csv file of texts with text and label "
        "(then --model is a transformers sequence classifier's folder with its tokenizer.json, "
        "or a saved text model)",
    )
    parser.add_argument("--val-data", help="texts: a .jsonl / .csv validation file")
    parser.add_argument(
        "--max-length", type=positive_int, default=128, help="texts: tokens per text (128)"
    )
    parser.add_argument("--recipe", required=True, help="standard, bcosify-cnn, bcosify-vit, ...")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--epochs", type=positive_int, help="epochs (default: the recipe's)")
    parser.add_argument(
        "--batch-size", type=positive_int, help="images per step (default: the recipe's)"
    )
    parser.add_argument("--lr", type=float, help="learning rate (may change on resume)")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="training image size (default: the recipe's; the saved model records it)",
    )
    parser.add_argument(
        "--seed", type=int, help="seeds the initial weights, data order and augmentation"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any recipe field, e.g. --set ema_decay=0.999 (JSON values)",
    )
    parser.add_argument("--num-train", type=positive_int, help="synthetic data: training examples")
    parser.add_argument("--num-val", type=positive_int, help="synthetic data: validation examples")
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip (and count) unreadable images of a folder instead of stopping at the first",
    )
    parser.add_argument(
        "--scan-images",
        choices=("quick", "full", "off"),
        default="quick",
        help="check an image folder's files before training: quick (headers and PNG "
        "checksums, the default), full (decode every image) or off",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        help="stop after N steps (with a checkpoint, and the model written)",
    )
    parser.add_argument(
        "--time-budget",
        type=positive_float,
        metavar="SECONDS",
        help="end the run (finished, its model written) when this many seconds of training "
        "are spent; resuming spends what is left",
    )
    parser.add_argument("--no-resume", action="store_true", help="refuse to resume: fail instead")
    parser.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="image models: compile with torch.compile (bcosify.compile); the first steps take "
        "longer, later ones less",
    )
    parser.add_argument(
        "--calibrate",
        type=positive_int,
        metavar="N",
        help="B-cos recipes: convert, then rescale the converted model on N training images "
        "(bcosify.calibrate) before the first step, so that it starts alive",
    )
    parser.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name in ("epochs", "batch_size", "lr", "image_size", "seed", "time_budget"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise RecipeError(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value  # a bare string such as --set optimizer=adam
    return overrides


def run(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.recipe, **_overrides(args))
    output_folder(args.out)
    apart_from_inputs(
        args.out,
        {
            "--model": args.model,
            "--weights": args.weights,
            "--data": args.data,
            "--val-data": args.val_data,
        },
    )
    if args.device is not None:
        check_device(args.device)
    if args.no_resume and (args.out / CHECKPOINT_FILE).exists():
        raise CheckpointError(f"{str(args.out)!r} already holds a run and --no-resume was given")
    # the initial weights of a model built here (a source without weights) follow --seed
    torch.manual_seed(recipe.seed)
    if args.compile and (recipe.loss in DISTILLATION_LOSSES or is_text_file(args.data)):
        raise UsageError(
            "--compile is for training image models with labels; train without it for "
            f"{'texts' if is_text_file(args.data) else f'the {recipe.name} recipe'}"
        )
    if recipe.loss in DISTILLATION_LOSSES:
        return _align(args, recipe)
    if is_text_file(args.data):
        return _train_text(args, recipe)
    if args.val_data is not None:
        raise UsageError("--val-data is for texts (--data a .jsonl or .csv file)")
    train_data, val_data = _splits(args, recipe)
    classes = getattr(train_data, "classes", None)
    model = load_model_argument(args.model, args.weights, len(classes) if classes else None)
    if args.calibrate is not None:
        model = _calibrated(model, recipe, train_data, args)
    result = _train(args, model, train_data, val_data, recipe)
    for data in (train_data, val_data):
        if getattr(data, "num_skipped", 0):
            print(data.summary())
    return _finish(result.finished, result.step, result.signal, args.out)


def _calibrated(model: Any, recipe: Recipe, data: Any, args: argparse.Namespace) -> Any:
    """``--calibrate N``: the model converted as the recipe does, then calibrated on the first
    N training images (not when resuming: the checkpoint's weights replace it)."""
    if recipe.model != "bcosify":
        raise UsageError(
            f"--calibrate is for the recipes that B-cosify a model (bcosify-cnn, bcosify-vit), "
            f"not {recipe.name}"
        )
    if (args.out / CHECKPOINT_FILE).exists():
        print("--calibrate: resuming from the checkpoint, whose weights it would not change")
        return model
    converted = prepare_model(model, recipe)
    if not isinstance(converted, BcosModel):
        raise UsageError("--calibrate is for image models")
    print(calibrate(converted, Subset(data, range(min(args.calibrate, len(data))))))
    return converted


def _train(
    args: argparse.Namespace, model: Any, train_data: Any, val_data: Any, recipe: Recipe
) -> Any:
    """:func:`bcosify.train.train` with the command line's run options."""
    return train(
        model,
        train_data,
        recipe,
        args.out,
        val_data=val_data,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
        compile_options={} if args.compile else None,
    )


def is_text_file(data: str) -> bool:
    """Whether ``--data`` names labelled texts (a ``.jsonl`` or ``.csv`` file)."""
    return Path(data).suffix in (".jsonl", ".csv")


def _train_text(args: argparse.Namespace, recipe: Recipe) -> int:
    """A text classifier trained on labelled texts, its tokenizer saved beside the model."""
    model = load_model_argument(args.model, args.weights, None)
    if not isinstance(model, (TextClassifier, BcosTextModel)):
        raise UsageError(
            f"--data {args.data} holds texts, but --model {args.model} is not a text classifier: "
            "pass a transformers sequence classifier's folder (save_pretrained, with its "
            "tokenizer) or a saved bcosify text model"
        )
    folder = Path(args.model)
    if not (folder / "tokenizer.json").is_file():
        folder = folder / "model"  # a run folder
    tokenizer = load_tokenizer(folder)
    classes = model.config.class_names if isinstance(model, BcosTextModel) else None
    train_data = TextFileDataset(args.data, tokenizer, max_length=args.max_length, classes=classes)
    val_data = (
        TextFileDataset(
            args.val_data, tokenizer, max_length=args.max_length, classes=train_data.classes
        )
        if args.val_data
        else None
    )
    network = model.model if isinstance(model, TextClassifier) else model
    result = _train(args, network, train_data, val_data, recipe)
    if result.finished:
        save_tokenizer(tokenizer, args.out / "model")
    return _finish(result.finished, result.step, result.signal, args.out)


def _align(args: argparse.Namespace, recipe: Recipe) -> int:
    """A B-cos student aligned to (or, for CLIP, distilled from) the original: labels, if the
    data has any, unused."""
    model = load_model_argument(args.model, args.weights, None)
    if args.data == "synthetic":
        train_data, val_data = _splits(args, recipe)
    else:
        root = Path(args.data)
        augment = recipe.augment == "standard"
        has_splits = (root / "train").is_dir()
        if has_splits and (root / "val").is_dir():
            train_data = UnlabelledImages(root / "train", recipe.image_size, train=augment)
            val_data = UnlabelledImages(root / "val", recipe.image_size, train=False)
        elif _is_clip(model):  # a CLIP tower distils from every image of the folder
            train_data = UnlabelledImages(
                root / "train" if has_splits else root, recipe.image_size, train=augment
            )
            val_data = None
        else:  # any folder of images: a part of them held out, to measure the student on
            train_data, val_data = held_out_split(
                root / "train" if has_splits else root,
                recipe.image_size,
                seed=recipe.seed,
                train=augment,
            )
    result = align(
        model,
        train_data,
        args.out,
        recipe=recipe,
        val_data=val_data,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    status = _finish(result.train.finished, result.train.step, result.train.signal, args.out)
    last = result.train.history[-1] if result.train.history else {}
    if "val_agreement" in last:
        print(
            f"agreement with the original on {len(val_data)} held-out images: top-1 "
            f"{last['val_agreement']:.1%}, top-5 overlap {last['val_top5_overlap']:.1%}"
        )
    if result.config and result.config.paths:
        print(f"aligned the output and {', '.join(result.config.paths)} to the original")
    if result.train.finished and isinstance(result.model, BcosCLIP):
        print(f"the B-cos CLIP is in {args.out}/clip/ (load it with bcosify.load_clip)")
    return status


def _is_clip(model: Any) -> bool:
    try:
        as_clip(model)
    except ModelSourceError:
        return isinstance(model, BcosCLIP)
    return True


def _splits(args: argparse.Namespace, recipe: Recipe) -> tuple[Any, Any]:
    """The training and validation sets of ``--data`` (synthetic, or a train/val folder)."""
    sizes = {"train": args.num_train, "val": args.num_val}
    train_data, val_data = (
        build_dataset(
            args.data,
            split,
            recipe.image_size,
            num_examples=sizes[split],
            seed=recipe.seed,
            skip_corrupt=args.skip_corrupt,
            augment=recipe.augment == "standard",
        )
        for split in ("train", "val")
    )
    if args.scan_images != "off":
        for data in (train_data, val_data):
            if isinstance(data, ImageFolderDataset) and data.validate(
                decode=args.scan_images == "full"
            ):
                print(data.summary())
    return train_data, val_data


def _finish(finished: bool, step: int, signal: int | None, out: Path) -> int:
    """Say how the run ended; the exit status: 0, or 128 + the signal that stopped it."""
    state = "finished" if finished else "stopped (resume by running the same command)"
    print(f"{state} after {step} steps; run folder {out}/")
    return 0 if signal is None else 128 + int(signal)
