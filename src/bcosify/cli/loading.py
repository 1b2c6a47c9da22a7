"""How the command line finds a model: a source name, a saved model folder or a run folder."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..convert import load as load_bcos_model
from ..convert import load_clip
from ..errors import CheckpointError
from ..models import create, load_model

__all__ = ["load_model_argument"]


def load_model_argument(spec: str, weights: str | None, num_classes: int | None) -> nn.Module:
    """A source name, a saved model folder (B-cos, B-cos CLIP or ordinary) or a run folder (its
    ``model/``).

    Example:
        >>> load_model_argument("torchvision:resnet18", None, 3).fc.out_features
        3
    """
    folder = Path(spec)
    if (folder / "model" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "model"  # a run folder of bcosify train
    config = folder / "config.json"
    if config.is_file():
        kind = json.loads(config.read_text()).get("format", "")
        if kind.startswith("bcosify-model"):
            return load_bcos_model(folder)
        if kind.startswith("bcosify-clip"):
            return load_clip(folder)
        return load_model(folder)
    if Path(spec).exists():
        raise CheckpointError(f"{spec!r} is a folder without a bcosify config.json")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return create(spec, weights=weights, **kwargs)
