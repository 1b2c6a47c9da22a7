"""``bcosify evaluate``: accuracy and explanation metrics of a model on a dataset."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..convert import BcosModel
from ..data import build_dataset
from ..errors import EvaluationError
from ..evaluate import (
    accuracy,
    build_explainer,
    deletion_auc,
    grid_pointing_game,
    mask_localisation,
)
from ..train import Normalized
from ..train.prepare import input_normalization
from .loading import load_model_argument

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
    parser.add_argument("--split", default="val")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-examples", type=int, help="synthetic data: examples")
    parser.add_argument(
        "--explainers",
        nargs="*",
        help="default: bcos for a B-cos model, gradcam for an ordinary one",
    )
    parser.add_argument("--grids", type=int, default=25, help="2x2 grids for the pointing game")
    parser.add_argument("--images", type=int, default=32, help="images for localisation/deletion")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = load_model_argument(str(args.model), None, None).eval()
    if not isinstance(model, BcosModel):
        model = Normalized(model, *input_normalization(model)).eval()
    synthetic = args.data == "synthetic"
    data = build_dataset(
        args.data,
        args.split,
        args.image_size,
        num_examples=args.num_examples,
        return_mask=synthetic,
    )
    results: dict[str, Any] = {
        "model": str(args.model),
        "data": str(args.data),
        "split": args.split,
        "accuracy": accuracy(model, data),
    }
    names = args.explainers or (["bcos"] if isinstance(model, BcosModel) else ["gradcam"])
    items = [data[i] for i in range(min(args.images, len(data)))]
    images = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items])
    rows = []
    for name in names:
        explainer = build_explainer(name, model)
        entry: dict[str, Any] = {}
        try:
            entry["pointing_game_2x2"] = grid_pointing_game(
                model, explainer, data, n=2, num_grids=args.grids
            ).mean
        except EvaluationError as error:
            entry["pointing_game_2x2"], entry["pointing_game_error"] = None, str(error)
        tic = time.perf_counter()
        attributions = explainer.attribute(images, labels)
        entry["seconds_per_image"] = (time.perf_counter() - tic) / len(images)
        entry["deletion_auc"] = float(deletion_auc(model, images, labels, attributions).mean())
        if synthetic:
            masks = torch.stack([item[2] for item in items])
            entry["mask_localisation"] = float(mask_localisation(attributions, masks).mean())
        results.setdefault("explanations", {})[name] = entry
        rows.append((name, entry))
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
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
