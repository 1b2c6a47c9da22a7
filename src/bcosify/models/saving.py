"""Saving and loading ordinary (not B-cos) models made from a source, e.g. after training."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..serialization import read_config_json, read_weights, write_pretrained
from .sources import SourceInfo, create, load_state_dict_strictly, source_info

__all__ = ["load_model", "save_model"]

_FORMAT = "bcosify-source-model/1"


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Save an ordinary model as safetensors weights plus a JSON config.

    A model made by :func:`create` records its source, so :func:`load_model` rebuilds it; any
    other model is saved with ``"name": null`` and loads into an instance of its architecture
    (``load_model(directory, model=...)``).

    Example:
        >>> import tempfile
        >>> out = save_model(create("torchvision:resnet18", num_classes=2), tempfile.mkdtemp())
        >>> load_model(out).fc.out_features
        2
    """
    info = source_info(model)
    config = {"format": _FORMAT, **(info.to_dict() if info else {"name": None})}
    return write_pretrained(directory, model, config)


def load_model(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_model` (no pickles: safetensors and JSON).

    A model saved without a source needs an instance of its architecture as ``model``.
    """
    config = read_config_json(directory)
    if config.pop("format", None) != _FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not a saved bcosify source model")
    if config.get("name") is not None:
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
    elif model is None:
        raise CheckpointError(
            f"{str(directory)!r} holds a model saved without a source; pass an instance of its "
            "architecture: load_model(directory, model=MyNet())"
        )
    state = read_weights(directory)
    load_state_dict_strictly(model, state, f"the weights in {str(directory)!r}", CheckpointError)
    return model
