"""``bcosify.load``: rebuild a saved B-cos model from its JSON config and safetensors weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.sources import create
from ..serialization import load_pretrained, read_config_json
from .converter import convert
from .hub import register_loader
from .model import MODEL_FORMAT, BcosModel, read_config
from .text import load_text
from .text_model import TEXT_FORMAT, BcosTextModel

__all__ = ["load"]


def load(directory: str | Path, model: nn.Module | None = None) -> BcosModel | BcosTextModel:
    """Load a model saved with :meth:`BcosModel.save_pretrained`, without unpickling anything.

    The architecture is rebuilt from the config's source (``"torchvision:resnet50"``) and
    converted with the saved options, then the weights are loaded strictly. A model converted
    from a user-built network has no source: pass an instance of its architecture as ``model``.
    A text classifier (:class:`~bcosify.convert.BcosTextModel`) is rebuilt from its saved
    transformers config (:func:`~bcosify.convert.load_text`).

    Example:
        >>> import tempfile, torch, bcosify
        >>> original = bcosify.models.create("torchvision:resnet18", num_classes=3)
        >>> converted, _ = bcosify.convert(original)
        >>> directory = converted.save_pretrained(tempfile.mkdtemp())
        >>> x = torch.rand(1, 3, 32, 32)
        >>> torch.equal(bcosify.load(directory)(x), converted(x))
        True
    """
    if read_config_json(directory).get("format") == TEXT_FORMAT:  # a text classifier
        if model is not None:
            raise CheckpointError(
                f"{str(directory)!r} holds a text classifier, which is rebuilt from its saved "
                "transformers config; do not pass model="
            )
        return load_text(directory)  # type: ignore[return-value]
    config = read_config(directory)
    if model is None and config.source is None:
        raise CheckpointError(
            f"{str(directory)!r} holds a model converted from a user-built network; "
            "pass its architecture: bcosify.load(directory, model=MyNet())"
        )

    def build() -> BcosModel:
        original = model if model is not None else create(config.source, **config.source_kwargs)
        # every option is an argument of convert under the same name
        rebuilt, _ = convert(original, **config.options.to_dict(), class_names=config.class_names)
        rebuilt.config = config
        return rebuilt

    rebuilt = load_pretrained(
        directory, build, read_config_json(directory), _check_outputs, precheck=model is None
    )
    return rebuilt.eval()


def _check_outputs(model: BcosModel) -> None:
    """The saved class names are one per output (checked on the ``meta`` device, where the
    model runs without memory; skipped for a model that cannot run there)."""
    config = model.config
    if not config.class_names:
        return
    size = config.input_size or (224, 224)
    try:
        model.input_check = "off"
        outputs = model(torch.empty(1, model.in_channels, *size, device="meta")).shape
    except Exception:
        return
    if len(outputs) == 2 and outputs[1] != len(config.class_names):
        raise CheckpointError(
            f"the config names {len(config.class_names)} classes, but the model it describes "
            f"has {outputs[1]} outputs: the class names belong to another model"
        )


register_loader(MODEL_FORMAT, load)
register_loader(TEXT_FORMAT, load)
