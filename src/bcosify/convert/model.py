"""The converted model: encoding, B-cos network, logit bias; saved as safetensors plus JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import CheckpointError
from ..nn import InputEncoding, InputNormalization, LogitBias
from ..serialization import CONFIG_FILE, read_config_json, write_pretrained
from .options import ConversionOptions

__all__ = ["BcosModel", "ModelConfig", "read_config"]

_FORMAT = "bcosify-model/1"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a converted model, stored as ``config.json``.

    Attributes:
        options: the conversion options.
        source: the source the original came from (``"torchvision:resnet50"``), or None for a
            user-built model (loading it then needs the architecture, see :func:`bcosify.load`).
        source_kwargs: the architecture's arguments, such as ``num_classes``.
        class_names: the class names, when known.
        input_size: the image size the model expects, when known.
    """

    options: ConversionOptions
    source: str | None = None
    source_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    input_size: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": _FORMAT,
            "bcosify_version": __version__,
            "source": self.source,
            "source_kwargs": self.source_kwargs,
            "class_names": self.class_names,
            "input_size": list(self.input_size) if self.input_size else None,
            "options": self.options.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if data.get("format") != _FORMAT:
            raise CheckpointError(
                f"not a bcosify model config (format {data.get('format')!r}, expected {_FORMAT!r})"
            )
        size = data.get("input_size")
        return cls(
            options=ConversionOptions.from_dict(data["options"]),
            source=data.get("source"),
            source_kwargs=dict(data.get("source_kwargs") or {}),
            class_names=data.get("class_names"),
            input_size=(int(size[0]), int(size[1])) if size else None,
        )


class BcosModel(nn.Module):
    """A B-cos model made by :func:`bcosify.convert`: takes RGB images in ``[0, 1]``.

    ``forward`` encodes the images as ``[x, 1 - x]`` (for the ``"paper"`` encoding followed by the
    normalisation layer), runs the converted network and adds the logit bias.

    Example:
        >>> import torch, bcosify
        >>> model, report = bcosify.convert(
        ...     bcosify.models.create("torchvision:resnet18", num_classes=4))
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
    """

    def __init__(self, network: nn.Module, config: ModelConfig, logit_bias: float | None) -> None:
        super().__init__()
        options = config.options
        self.config = config
        self.encoding = InputEncoding()
        if options.encoding == "paper":
            mean = [*options.input_mean, *(1.0 - m for m in options.input_mean)]
            self.normalization: nn.Module = InputNormalization(mean, [*options.input_std] * 2)
        else:
            self.normalization = nn.Identity()
        self.network = network
        self.logit_bias: nn.Module = (
            LogitBias(logit_bias) if logit_bias is not None else nn.Identity()
        )

    @property
    def in_channels(self) -> int:
        return len(self.config.options.input_mean)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (N, {self.in_channels}, H, W) with values in [0, 1], "
                f"got {tuple(images.shape)}"
            )
        return self.logit_bias(self.network(self.normalization(self.encoding(images))))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``directory``; returns it.

        Each file is written to a temporary name and renamed, so an interrupted save never
        leaves a half-written file under the final name.

        Example:
            >>> import tempfile, torch, bcosify
            >>> model, _ = bcosify.convert(
            ...     bcosify.models.create("torchvision:resnet18", num_classes=4))
            >>> out = model.save_pretrained(tempfile.mkdtemp())
            >>> sorted(p.name for p in out.iterdir())
            ['config.json', 'model.safetensors']
        """
        return write_pretrained(directory, self, self.config.to_dict())


def read_config(directory: str | Path) -> ModelConfig:
    """Read ``config.json`` of a saved model, with clear errors for missing or broken files."""
    data = read_config_json(directory)
    try:
        return ModelConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        path = Path(directory) / CONFIG_FILE
        raise CheckpointError(f"{str(path)!r} is not a valid bcosify config: {error}") from None
