"""Saving and loading ordinary (not B-cos) models made from a source, e.g. after training."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..schema import (
    MAX_IMAGE_SIDE,
    Deferred,
    Field,
    Integer,
    ListOf,
    Nullable,
    Number,
    Text,
    class_names,
)
from ..serialization import load_pretrained, read_checked_config, write_pretrained
from .sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SourceInfo,
    check_source_fields,
    create,
    source_info,
)

__all__ = ["SOURCE_MODEL_FORMAT", "load_model", "save_model"]

SOURCE_MODEL_FORMAT = "bcosify-source-model/1"


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
    config = {"format": SOURCE_MODEL_FORMAT, **(info.to_dict() if info else {"name": None})}
    if info is None and class_names is not None:
        config["class_names"] = list(class_names)
    return write_pretrained(directory, model, config)


_CONFIG_FIELDS: dict[str, Field] = {
    "name": Nullable(Text(max_length=200)),
    "kwargs": Deferred(),
    "input_mean": ListOf(Number(-100.0, 100.0), 1, 16),
    "input_std": ListOf(Number(0.0, 100.0, positive=True), 1, 16),
    "class_names": class_names(),
    "input_size": Nullable(ListOf(Integer(1, MAX_IMAGE_SIDE), 2, 2)),
}


def _check_source(config: dict[str, Any]) -> None:
    check_source_fields({"source": config.get("name"), "source_kwargs": config.get("kwargs")})


def load_model(directory: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save_model` (no pickles: safetensors and JSON, every field
    of the config checked).

    A model saved without a source needs an instance of its architecture as ``model``.

    Example:
        >>> import tempfile
        >>> out = save_model(create("torchvision:resnet18", num_classes=2), tempfile.mkdtemp())
        >>> load_model(out).fc.out_features
        2
    """
    config = read_checked_config(directory, SOURCE_MODEL_FORMAT, _CONFIG_FIELDS, rule=_check_source)
    name = config.get("name")
    if name is None and model is None:
        raise CheckpointError(
            f"{str(directory)!r} holds a model saved without a source; pass an instance of its "
            "architecture: load_model(directory, model=MyNet())"
        )

    def build() -> nn.Module:
        if name is None:
            assert model is not None
            model.bcosify_class_names = config.get("class_names")  # type: ignore[assignment]
            return model
        rebuilt = create(name, **config.get("kwargs", {}))
        size = config.get("input_size")
        rebuilt.bcosify_source = SourceInfo(  # type: ignore[assignment]
            name,
            config.get("kwargs", {}),
            tuple(config.get("input_mean", IMAGENET_MEAN)),
            tuple(config.get("input_std", IMAGENET_STD)),
            config.get("class_names"),
            (size[0], size[1]) if size else None,
        )
        return rebuilt

    return load_pretrained(directory, build, config, precheck=name is not None)
