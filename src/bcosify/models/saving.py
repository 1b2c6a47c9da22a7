"""Saving and loading ordinary (not B-cos) models made from a source, e.g. after training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..serialization import CONFIG_FILE, read_config_json, read_weights, write_pretrained
from .sources import SourceInfo, create, load_state_dict_strictly, source_info

__all__ = ["load_model", "save_model"]

_FORMAT = "bcosify-source-model/1"


def save_model(
    model: nn.Module, directory: str | Path, *, class_names: list[str] | None = None
) -> Path:
    """Save an ordinary model as safetensors weights plus a JSON config.

    A model made by :func:`create` records its source, so :func:`load_model` rebuilds it; any
    other model is saved with ``"name": null`` and loads into an instance of its architecture
    (``load_model(directory, model=...)``). ``class_names`` are stored in the config (a source
    model's default to its source's); :func:`~bcosify.models.class_names_of` reads them back.

    Example:
        >>> import tempfile
        >>> out = save_model(create("torchvision:resnet18", num_classes=2), tempfile.mkdtemp(),
        ...                  class_names=["cat", "dog"])
        >>> from bcosify.models import class_names_of
        >>> model = load_model(out)
        >>> model.fc.out_features, class_names_of(model)
        (2, ['cat', 'dog'])
    """
    info = source_info(model)
    if info is not None and class_names is not None:
        info = replace(info, class_names=list(class_names))
    config = {"format": _FORMAT, **(info.to_dict() if info else {"name": None})}
    if info is None and class_names is not None:
        config["class_names"] = list(class_names)
    return write_pretrained(directory, model, config)


def load_model(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_model` (no pickles: safetensors and JSON).

    A model saved without a source needs an instance of its architecture as ``model``.
    """
    config = read_config_json(directory)
    if config.pop("format", None) != _FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not a saved bcosify source model")
    if config.get("name") is not None:
        try:
            info = SourceInfo(
                **{
                    **config,
                    "input_mean": tuple(config["input_mean"]),
                    "input_std": tuple(config["input_std"]),
                    "input_size": tuple(config["input_size"]) if config["input_size"] else None,
                }
            )
            if not isinstance(info.name, str) or not isinstance(info.kwargs, dict):
                raise TypeError("'name' must be a string and 'kwargs' an object")
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(
                f"{str(Path(directory) / CONFIG_FILE)!r} is not a valid bcosify config: "
                f"{type(error).__name__}: {error}"
            ) from None
        model = create(info.name, **info.kwargs)
        model.bcosify_source = info  # type: ignore[assignment]
    elif model is None:
        raise CheckpointError(
            f"{str(directory)!r} holds a model saved without a source; pass an instance of its "
            "architecture: load_model(directory, model=MyNet())"
        )
    elif isinstance(config.get("class_names"), list):
        model.bcosify_class_names = config["class_names"]  # type: ignore[assignment]
    state = read_weights(directory)
    load_state_dict_strictly(model, state, f"the weights in {str(directory)!r}", CheckpointError)
    return model
