"""``bcosify train``: train or fine-tune a model with a recipe, on one process or under torchrun."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..data import UnlabelledImages, build_dataset
from ..errors import CheckpointError
from ..train import DISTILLATION_LOSSES, Recipe, RecipeError, distill, get_recipe, train
from ..train.checkpoint import CHECKPOINT_FILE
from .loading import load_model_argument

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train or B-cosify-and-fine-tune a model with a recipe",
        description=(
            "Train with a recipe (standard, bcosify-cnn, bcosify-vit, bcos-scratch), or distil a "
            "B-cosified CLIP image tower from the original (bcosify-clip: --model is a CLIP "
            "model, --data any folder of images). Resumes from the checkpoint in --out if there "
            "is one. Under torchrun (torchrun --nproc_per_node=N -m bcosify train ...) it trains "
            "with DDP."
        ),
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a source (torchvision:resnet18, timm:...) or a saved model folder",
    )
    parser.add_argument("--weights", help="weights for a source model (file or weight name)")
    parser.add_argument("--data", required=True, help="'synthetic' or an image folder")
    parser.add_argument("--recipe", required=True, help="standard, bcosify-cnn, bcosify-vit, ...")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any recipe field, e.g. --set ema_decay=0.999 (JSON values)",
    )
    parser.add_argument("--num-train", type=int, help="synthetic data: training examples")
    parser.add_argument("--num-val", type=int, help="synthetic data: validation examples")
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip (and count) unreadable images of a folder instead of stopping at the first",
    )
    parser.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after N steps")
    parser.add_argument("--no-resume", action="store_true", help="refuse to resume: fail instead")
    parser.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name in ("epochs", "batch_size", "lr", "image_size", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep:
            raise RecipeError(f"--set takes FIELD=VALUE, got {item!r}")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value  # a bare string such as --set optimizer=adam
    return overrides


def run(args: argparse.Namespace) -> int:
    recipe = get_recipe(args.recipe, **_overrides(args))
    if args.no_resume and (args.out / CHECKPOINT_FILE).exists():
        raise CheckpointError(f"{str(args.out)!r} already holds a run and --no-resume was given")
    if recipe.loss in DISTILLATION_LOSSES:
        return _distill(args, recipe)
    train_data, val_data = _splits(args, recipe)
    classes = getattr(train_data, "classes", None)
    model = load_model_argument(args.model, args.weights, len(classes) if classes else None)
    result = train(
        model,
        train_data,
        recipe,
        args.out,
        val_data=val_data,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    )
    for data in (train_data, val_data):
        if getattr(data, "num_skipped", 0):
            print(data.summary())
    _print_result(result.finished, result.step, args.out)
    return 0


def _distill(args: argparse.Namespace, recipe: Recipe) -> int:
    """A CLIP image tower distilled from the original: labels, if the data has any, unused."""
    if args.data == "synthetic":
        train_data, val_data = _splits(args, recipe)
    else:
        root = Path(args.data)
        has_splits = (root / "train").is_dir()
        train_data = UnlabelledImages(
            root / "train" if has_splits else root,
            recipe.image_size,
            train=recipe.augment == "standard",
        )
        val_root = root / "val"
        val_data = (
            UnlabelledImages(val_root, recipe.image_size, train=False)
            if has_splits and val_root.is_dir()
            else None
        )
    model = load_model_argument(args.model, args.weights, None)
    result = distill(
        model,
        train_data,
        args.out,
        recipe=recipe,
        val_data=val_data,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
    ).train
    _print_result(result.finished, result.step, args.out)
    if result.finished:
        print(f"the B-cos CLIP is in {args.out}/clip/ (load it with bcosify.load_clip)")
    return 0


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
    return train_data, val_data


def _print_result(finished: bool, step: int, out: Path) -> None:
    state = "finished" if finished else "stopped (resume by running the same command)"
    print(f"{state} after {step} steps; run folder {out}/")
