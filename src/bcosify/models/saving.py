"""Saving and loading ordinary (not B-cos) models made from a source, e.g. after training."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from .sources import SourceInfo, create, load_state_dict_strictly, source_info

__all__ = ["load_model", "save_model"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_FORMAT = "bcosify-source-model/1"


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Save an ordinary model as safetensors weights plus a JSON config.

    A model made by :func:`create` records its source, so :func:`load_model` rebuilds it; any
    other model is saved with ``"source": null`` and loads into an instance of its architecture.

    Example:
        >>> import tempfile
        >>> out = save_model(create("torchvision:resnet18", num_classes=2), tempfile.mkdtemp())
        >>> load_model(out).fc.out_features
        2
    """
    from safetensors.torch import save_file

    info = source_info(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / _WEIGHTS))
    config = {"format": _FORMAT, **(info.to_dict() if info else {"name": None})}
    (directory / _CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_model(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_model` (no pickles: safetensors and JSON).

    A model saved without a source needs an instance of its architecture as ``model``.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        config = json.loads((directory / _CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(directory)!r} holds no readable {_CONFIG}: {error}") from None
    if config.pop("format", None) != _FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not a saved bcosify source model")
    info = SourceInfo(
        **{
            **config,
            "input_mean": tuple(config["input_mean"]),
            "input_std": tuple(config["input_std"]),
            "input_size": tuple(config["input_size"]) if config["input_size"] else None,
        }
    )
    model = create(info.name, **info.kwargs)
    model.bcosify_source = info  # type: ignore[assignment]
    state = load_file(str(directory / _WEIGHTS))
    load_state_dict_strictly(model, state, f"the weights in {str(directory)!r}", CheckpointError)
    return model
