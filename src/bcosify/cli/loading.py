"""How the command line finds a model: a source name, a saved model folder or a run folder."""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from ..convert.hub import load_folder
from ..errors import BcosifyError, CheckpointError, UsageError
from ..models import create, input_size_of, load_model
from ..models.saving import SOURCE_MODEL_FORMAT
from ..models.text import is_hf_text_folder, load_hf_text_classifier
from ..serialization import CONFIG_FILE, read_config_json

__all__ = ["image_size_for", "load_model_argument"]

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def load_model_argument(spec: str, weights: str | None, num_classes: int | None) -> nn.Module:
    """A source name, a saved model folder (B-cos, B-cos CLIP, B-cos text or ordinary), a
    transformers sequence classifier's folder, or a run folder (its ``model/``).

    Example:
        >>> load_model_argument("torchvision:resnet18", None, 3).fc.out_features
        3
    """
    folder = Path(spec)
    if (folder / "model" / CONFIG_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        folder = folder / "model"  # a run folder of bcosify train
    if is_hf_text_folder(folder):  # a transformers sequence classifier's own folder
        if weights is not None:
            raise UsageError(f"--weights does not apply to {spec}, a transformers model folder")
        return load_hf_text_classifier(folder)
    if (folder / CONFIG_FILE).is_file():
        if weights is not None:
            raise UsageError(
                f"--weights applies to a model source (e.g. torchvision:resnet18); {spec} is a "
                "saved model, which has its weights"
            )
        return _load_saved(folder)
    if folder.is_file():
        hint = (
            f"pass the architecture with --model (e.g. torchvision:resnet18) and this file with "
            f"--weights {spec}"
            if folder.suffix in _WEIGHT_SUFFIXES
            else "pass a model source (e.g. torchvision:resnet18) or a saved model folder"
        )
        raise UsageError(f"--model {spec} is a file, not a model: {hint}")
    if folder.is_dir():
        raise CheckpointError(
            f"{spec!r} is a folder without a bcosify {CONFIG_FILE}: pass a folder written by "
            "bcosify (convert, train, save_pretrained), a run folder, or a model source"
        )
    if ":" not in spec:
        raise UsageError(
            f"--model {spec}: no such folder, and not a model source either (sources look "
            "like torchvision:resnet50, timm:resnet18 or hf:<folder>)"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return create(spec, weights=weights, **kwargs)


def _load_saved(folder: Path) -> nn.Module:
    """The model a saved folder describes: a B-cos model by its format's loader, else an
    ordinary model; a config that cannot be built is named."""
    kind = read_config_json(folder).get("format")
    loader = load_model if kind == SOURCE_MODEL_FORMAT else load_folder
    try:
        return loader(folder)
    except BcosifyError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        # what the config holds goes to the model's constructor: a wrong value fails there
        raise CheckpointError(
            f"bcosify cannot build the model that {str(folder / CONFIG_FILE)!r} describes: "
            f"{type(error).__name__}: {error}"
        ) from error


def image_size_for(model: nn.Module, asked: int | None) -> int | None:
    """The image size to feed ``model``: ``asked`` (``--image-size``), else the size the model
    records (:func:`~bcosify.models.input_size_of`); a note when the two differ.

    Example:
        >>> image_size_for(create("torchvision:resnet18"), 64)
        64
    """
    recorded = input_size_of(model)
    if asked is None:
        return recorded[0] if recorded else None
    if recorded and recorded[0] != asked:
        print(
            f"note: --image-size {asked} differs from the {recorded[0]} px the model records "
            "(it was trained or made at that size); results may differ",
            file=sys.stderr,
        )
    return asked
