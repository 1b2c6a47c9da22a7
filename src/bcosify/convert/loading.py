"""``bcosify.load``: rebuild a saved B-cos model from its JSON config and safetensors weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..models.sources import create, load_state_dict_strictly
from ..serialization import read_config_json, read_weights
from .converter import convert
from .model import BcosModel, read_config
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
    if model is None:
        if config.source is None:
            raise CheckpointError(
                f"{str(directory)!r} holds a model converted from a user-built network; "
                "pass its architecture: bcosify.load(directory, model=MyNet())"
            )
        model = create(config.source, **config.source_kwargs)
    # every option is an argument of convert under the same name
    rebuilt, _ = convert(model, **config.options.to_dict(), class_names=config.class_names)
    rebuilt.config = config
    state = read_weights(directory)
    load_state_dict_strictly(rebuilt, state, f"the weights in {str(directory)!r}", CheckpointError)
    return rebuilt.eval()
