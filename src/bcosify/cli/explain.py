"""``bcosify explain``: colour explanations and contribution maps of images, as PNGs."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..convert import BcosCLIP, BcosModel
from ..data import IMAGE_EXTENSIONS, eval_transform, list_images, read_image
from ..device import check_device, default_device
from ..errors import DataError, UsageError
from ..evaluate._common import has_bcos_layers
from ..explain import (
    Explanation,
    explain,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
    save_figure,
)
from ..folders import hold_folder
from ..models import class_names_of
from .arguments import apart_from_inputs, at_least, output_folder, positive_int
from .loading import image_size_for, load_model_argument

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="explain images with a B-cos model: colour explanations and contribution maps",
        description=(
            "Explain each image with the B-cos model's own explanation (for a B-cos CLIP model: "
            "of its cosine similarity with --prompt) and write, per image, "
            "<name>_colour.png (the B-cos colour explanation), <name>_contributions.png (the "
            "signed contribution map) and <name>_figure.png (both, with the image and a scale); "
            "<name> is the file name without its extension, or with it (cat.png -> cat_png) "
            "where two images share a name."
        ),
    )
    parser.add_argument("--model", required=True, help="a saved B-cos model or a run folder")
    parser.add_argument("--image", required=True, type=Path, help="an image file or a folder")
    parser.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    parser.add_argument(
        "--prompt",
        help="B-cos CLIP models: explain the cosine similarity of each image with this text, "
        'e.g. "a photo of a dog"',
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for the pictures (not an input; one explain at a time per folder)",
    )
    parser.add_argument(
        "--image-size", type=positive_int, help="resize and centre-crop to this size"
    )
    parser.add_argument(
        "--smooth", type=at_least(0), default=0, help="alpha smoothing (15 at 224 px)"
    )
    parser.add_argument(
        "--background",
        choices=("black", "white", "none"),
        default="black",
        help="what the colour explanations are laid over (black); none: RGBA PNGs",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="images explained together (16)"
    )
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:<index> (default: cuda if available, else cpu)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _explained(e: Explanation, index: int, names: list[str] | None, prompt: str | None) -> str:
    """What was explained, for the printed line: the class and logit, or the prompt."""
    if prompt is not None:
        return f"prompt {prompt!r}, cosine similarity {float(e.scores[index]):.3f}"
    target = int(e.targets[index]) if e.targets is not None else -1
    label = names[target] if names and 0 <= target < len(names) else str(target)
    return f"class {label}, logit {float(e.scores[index]):.3f}"


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        listing = list_images(path, recursive=False)
        if listing.skipped:
            print(f"{path}: {listing.note()}", file=sys.stderr)
        if not listing.images:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return listing.images
    if not path.exists():
        raise DataError(f"{path} does not exist")
    return [path]


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """The output name of every image: its stem, or, where stems collide (``cat.png`` and
    ``cat.jpg``), the stem and the extension, so that no image overwrites another's pictures.

    Example:
        >>> sorted(output_stems([Path("cat.png"), Path("cat.jpg"), Path("dog.png")]).values())
        ['cat_jpg', 'cat_png', 'dog']
    """
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return {
        path: path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix[1:].lower()}"
        for path in paths
    }


def run(args: argparse.Namespace) -> int:
    output_folder(args.out)
    apart_from_inputs(args.out, {"--model": args.model, "--image": args.image})
    model = load_model_argument(str(args.model), None, None)
    if not isinstance(model, (BcosModel, BcosCLIP)) and not has_bcos_layers(model):
        raise UsageError(
            f"{args.model} is an ordinary model; B-cosify it first (bcosify convert, or bcosify "
            "train --recipe bcosify-cnn) to get explanations that are exact by construction"
        )
    model = model.to(check_device(args.device) if args.device else default_device())
    is_clip = isinstance(model, BcosCLIP)
    if is_clip != (args.prompt is not None) or (is_clip and args.target is not None):
        raise UsageError(
            "a B-cos CLIP model explains how well an image matches a text: pass --prompt "
            '"a photo of a ..." (and no --target)'
            if is_clip
            else "--prompt needs a B-cos CLIP model (bcosify.convert.convert_clip); this model "
            "classifies, so pass --target or nothing"
        )
    size = image_size_for(model, args.image_size)
    names = None if is_clip else class_names_of(model)
    target = model.encode_text([args.prompt])[0] if is_clip else args.target
    failures = 0
    paths = _images(args.image)
    stems = output_stems(paths)
    with (
        hold_folder(args.out),
        tqdm(total=len(paths), unit="image", disable=args.no_progress) as bar,
    ):
        for batch in _batches(paths, size, args.batch_size):
            failures += batch.failures
            bar.update(batch.failures)
            if not batch.paths:
                continue
            try:
                e = explain(model, torch.stack(batch.images), target=target)
            except RuntimeError as error:  # the model's own check, e.g. images too small for it
                if getattr(args, "debug", False):
                    raise
                height, width = batch.images[0].shape[-2:]
                for path in batch.paths:
                    tqdm.write(
                        f"skipped: {path} ({width}x{height} pixels): the model cannot take it "
                        f"({str(error).splitlines()[0]}); pass --image-size to resize the images",
                        file=sys.stderr,
                    )
                failures += len(batch.paths)
                bar.update(len(batch.paths))
                continue
            scale = max(1, math.ceil(224 / batch.images[0].shape[-1]))
            title = None if args.prompt is None else repr(args.prompt)
            for index, path in enumerate(batch.paths):
                stem = args.out / stems[path]
                save_colour_explanation(
                    f"{stem}_colour.png",
                    e.inputs[index],
                    e.weights[index],
                    smooth=args.smooth,
                    upscale=scale,
                    background=None if args.background == "none" else args.background,
                )
                save_contribution_map(
                    f"{stem}_contributions.png", e.contribution_map[index], upscale=scale
                )
                figure = explanation_figure(
                    e, index, smooth=args.smooth, class_names=names, title=title
                )
                save_figure(figure, f"{stem}_figure.png", dpi=90)
                tqdm.write(
                    f"{path.name}: {_explained(e, index, names, args.prompt)}, completeness "
                    f"residual {float(e.residual[index]):.1e} -> {stem}_*.png"
                )
                bar.update(1)  # per image: the pictures take as long as the explanation
    return 1 if failures else 0


class _Batch:
    """Images of one size, read and transformed, and how many files before them failed."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.images: list[torch.Tensor] = []
        self.failures = 0


def _batches(paths: list[Path], size: int | None, batch_size: int) -> Iterator[_Batch]:
    """The images in order, in batches of at most ``batch_size`` of one shape each (images of
    their own size differ); an unreadable file is reported and counted, not batched."""
    batch = _Batch()
    for path in paths:
        try:
            pixels = read_image(path)
        except DataError as error:
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            batch.failures += 1
            continue
        image = eval_transform(size)(pixels) if size else pixels.float() / 255
        if batch.images and (
            image.shape != batch.images[0].shape or len(batch.images) == batch_size
        ):
            yield batch
            batch = _Batch()
        batch.paths.append(path)
        batch.images.append(image)
    yield batch
