"""``bcosify explain``: colour explanations and contribution maps of images, as PNGs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..convert import BcosCLIP, BcosModel
from ..data import IMAGE_EXTENSIONS, eval_transform, read_image
from ..errors import DataError, UsageError
from ..explain import (
    Explanation,
    explain,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
)
from .arguments import at_least, output_folder, positive_int
from .loading import load_model_argument

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
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--image-size", type=positive_int, help="resize and centre-crop to this size"
    )
    parser.add_argument(
        "--smooth", type=at_least(0), default=0, help="alpha smoothing (15 at 224 px)"
    )
    parser.set_defaults(run=run)


def _explained(e: Explanation, names: list[str] | None, prompt: str | None) -> str:
    """What was explained, for the printed line: the class and logit, or the prompt."""
    if prompt is not None:
        return f"prompt {prompt!r}, cosine similarity {float(e.scores[0]):.3f}"
    target = int(e.targets[0]) if e.targets is not None else -1
    label = names[target] if names and 0 <= target < len(names) else str(target)
    return f"class {label}, logit {float(e.scores[0]):.3f}"


def _images(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
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
    model = load_model_argument(str(args.model), None, None)
    if not isinstance(model, (BcosModel, BcosCLIP)):
        raise UsageError(
            f"{args.model} is an ordinary model; B-cosify it first (bcosify convert, or bcosify "
            "train --recipe bcosify-cnn) to get explanations that are exact by construction"
        )
    is_clip = isinstance(model, BcosCLIP)
    if is_clip != (args.prompt is not None) or (is_clip and args.target is not None):
        raise UsageError(
            "a B-cos CLIP model explains how well an image matches a text: pass --prompt "
            '"a photo of a ..." (and no --target)'
            if is_clip
            else "--prompt needs a B-cos CLIP model (bcosify.convert.convert_clip); this model "
            "classifies, so pass --target or nothing"
        )
    config = model.visual.config if is_clip else model.config
    size = args.image_size or (config.input_size or (None,))[0]
    names = config.class_names
    target = model.encode_text([args.prompt])[0] if is_clip else args.target
    failures = 0
    paths = _images(args.image)
    stems = output_stems(paths)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            pixels = read_image(path)
        except DataError as error:
            print(f"skipped: {error}", file=sys.stderr)
            failures += 1
            continue
        image = eval_transform(size)(pixels) if size else pixels.float() / 255
        try:
            e = explain(model, image[None], target=target)
        except RuntimeError as error:  # the model's own check, e.g. an image too small for it
            if getattr(args, "debug", False):
                raise
            height, width = image.shape[-2:]
            print(
                f"skipped: {path} ({width}x{height} pixels): the model cannot take it "
                f"({str(error).splitlines()[0]}); pass --image-size to resize the images",
                file=sys.stderr,
            )
            failures += 1
            continue
        scale = max(1, math.ceil(224 / image.shape[-1]))
        stem = args.out / stems[path]
        save_colour_explanation(
            f"{stem}_colour.png", e.inputs[0], e.weights[0], smooth=args.smooth, upscale=scale
        )
        save_contribution_map(f"{stem}_contributions.png", e.contribution_map[0], upscale=scale)
        explanation_figure(e, 0, smooth=args.smooth).savefig(f"{stem}_figure.png", dpi=90)
        print(
            f"{path.name}: {_explained(e, names, args.prompt)}, completeness residual "
            f"{float(e.residual[0]):.1e} -> {stem}_*.png"
        )
    return 1 if failures else 0
