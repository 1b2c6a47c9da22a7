"""The converted model: encoding, B-cos network, logit bias; saved as safetensors plus JSON."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import CheckpointError, InputRangeError, OptionsError
from ..models.sources import SOURCE_FIELDS, check_source_fields
from ..nn import InputEncoding, InputNormalization, LogitBias
from ..nn.mode import fx_tracing
from ..schema import MAX_IMAGE_SIDE, Field, Integer, ListOf, Nullable, class_names
from ..serialization import CONFIG_FILE, read_checked_config, write_pretrained
from .hub import HubMixin
from .options import OPTION_FIELDS, ConversionOptions

__all__ = [
    "CONFIG_FIELDS",
    "INPUT_TOLERANCE",
    "MODEL_FORMAT",
    "BcosModel",
    "ModelConfig",
    "read_config",
]

MODEL_FORMAT = "bcosify-model/1"


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
        return {
            "format": MODEL_FORMAT,
            "bcosify_version": __version__,
            "source": self.source,
            "source_kwargs": self.source_kwargs,
            "class_names": self.class_names,
            "input_size": list(self.input_size) if self.input_size else None,
            "options": self.options.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config of a checked ``config.json`` (:func:`read_config`)."""
        size = data.get("input_size")
        return cls(
            options=ConversionOptions(**data["options"]),
            source=data.get("source"),
            source_kwargs=dict(data.get("source_kwargs") or {}),
            class_names=data.get("class_names"),
            input_size=(size[0], size[1]) if size else None,
        )


CONFIG_FIELDS: dict[str, Field] = {
    **SOURCE_FIELDS,
    "class_names": class_names(),
    "input_size": Nullable(ListOf(Integer(1, MAX_IMAGE_SIDE), 2, 2)),
    "options": OPTION_FIELDS,
}
"""What a saved B-cos model's ``config.json`` may hold, besides its format and hash."""


InputCheck = Literal["error", "warn", "off"]

INPUT_TOLERANCE = 0.1
"""How far outside ``[0, 1]`` an input may go before :class:`BcosModel` objects: resampling
(bicubic interpolation of a tensor) overshoots a little, a normalised image (about -2 to 2.6)
or a 0-255 image far more."""

# the parts of a timm model's interface that a converted timm model keeps (see __getattr__)
_FAMILY_METHODS = ("forward_features", "forward_head", "reset_classifier")


class BcosModel(HubMixin, nn.Module):
    """A B-cos model made by :func:`bcosify.convert`: takes RGB images in ``[0, 1]``.

    ``forward`` encodes the images as ``[x, 1 - x]`` (for the ``"paper"`` encoding followed by the
    normalisation layer), runs the converted network and adds the logit bias.

    ``network`` is the original model's own module tree, converted in place: every module path
    of the original exists under ``network.`` (``model.network.layer4[-1]``), with the original
    classes, and runs in the forward pass, so hooks, Captum's layer methods, GradCAM and
    torchvision's feature extraction work on it as on the original. A converted timm model
    keeps timm's interface on the model itself: ``forward_features`` (on images in ``[0, 1]``),
    ``forward_head``, ``reset_classifier`` (the new head a B-cos layer, the logit bias
    updated), ``num_classes`` and a ``pretrained_cfg`` with mean 0 and std 1, so that
    ``timm.data.resolve_data_config(model=model)`` gives transforms that feed ``[0, 1]``.

    ``save_pretrained`` / ``bcosify.load`` keep it on disk, ``from_pretrained`` /
    ``push_to_hub`` on the Hugging Face Hub (:mod:`bcosify.convert.hub`).

    Inputs outside ``[0, 1]`` (by more than :data:`INPUT_TOLERANCE`), the likeliest silent
    mistake, raise :class:`~bcosify.errors.InputRangeError`; set ``model.input_check`` to
    ``"warn"`` or ``"off"`` to change that.

    Example:
        >>> import torch, bcosify
        >>> model, report = bcosify.convert(
        ...     bcosify.models.create("torchvision:resnet18", num_classes=4))
        >>> model(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 4])
        >>> type(model.network.layer4[-1]).__name__
        'BasicBlock'
    """

    def __init__(self, network: nn.Module, config: ModelConfig, logit_bias: float | None) -> None:
        super().__init__()
        options = config.options
        self.config = config
        self.input_check: InputCheck = "error"
        self.encoding = InputEncoding()
        if options.encoding == "paper":
            mean = [*options.input_mean, *(1.0 - m for m in options.input_mean)]
            self.normalization: nn.Module = InputNormalization(mean, [*options.input_std] * 2)
        else:
            self.normalization = nn.Identity()
        self.network = network
        self.set_logit_bias(logit_bias)

    @property
    def in_channels(self) -> int:
        return len(self.config.options.input_mean)

    @property
    def num_classes(self) -> int | None:
        """The number of outputs of the classifier, when the network says (timm models)."""
        value = getattr(self.network, "num_classes", None)
        return int(value) if isinstance(value, int) else None

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config for this model: the original's, with the input in ``[0, 1]``
        (mean 0, std 1), so timm's ``resolve_data_config``/``create_transform`` fit it."""
        cfg = dict(getattr(self.network, "pretrained_cfg", None) or {})
        size = self.config.input_size
        if size and "input_size" not in cfg:
            cfg["input_size"] = (self.in_channels, *size)
        cfg.update(
            mean=(0.0,) * self.in_channels, std=(1.0,) * self.in_channels, input_range=(0.0, 1.0)
        )
        return cfg

    default_cfg = pretrained_cfg

    def set_logit_bias(self, value: float | None) -> None:
        """Replace the logit bias (None: no logit bias)."""
        self.logit_bias: nn.Module = LogitBias(value) if value is not None else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        return self.logit_bias(self.network(self._encode(images)))

    def __getattr__(self, name: str) -> Any:
        # timm's interface, only where the converted network has it (so hasattr tells the truth)
        if name in _FAMILY_METHODS:
            network = self._modules.get("network")
            if network is not None and callable(getattr(network, name, None)):
                return getattr(self, f"_{name}")
        return super().__getattr__(name)

    def _forward_features(self, images: Tensor) -> Tensor:
        """timm's ``forward_features``, on images in ``[0, 1]``."""
        return self.network.forward_features(self._encode(images))

    def _forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """timm's ``forward_head``: the logits (logit bias included) from the features."""
        out = self.network.forward_head(features, pre_logits=pre_logits)
        return out if pre_logits else self.logit_bias(out)

    def _reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        """timm's ``reset_classifier``: a new head for ``num_classes`` classes, converted like
        the original one (a B-cos layer, before the pooling), and the logit bias for them."""
        from .families.timm import reset_classifier

        reset_classifier(self.network, self.config.options, num_classes, *args, **kwargs)
        self.config.class_names = None
        self.config.source_kwargs["num_classes"] = num_classes
        options = self.config.options
        auto = options.logit_bias == "auto" and not options.keep_bias
        bias = (-math.log(num_classes - 1) if num_classes > 1 else None) if auto else None
        if options.logit_bias not in ("auto", None):
            bias = float(options.logit_bias)
        device = next(self.parameters()).device
        self.set_logit_bias(bias if num_classes else None)
        self.logit_bias.to(device)

    def _encode(self, images: Tensor) -> Tensor:
        if _checking():
            self._check(images)
        return self.normalization(self.encoding(images))

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (N, {self.in_channels}, H, W) with values in [0, 1], "
                f"got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise InputRangeError(
                f"the images are {images.dtype}, but a B-cos model takes floating-point RGB "
                "images in [0, 1]: pass images.float() / 255 for 0-255 pixels (or "
                "images.float() for a 0/1 mask)"
            )
        if self.input_check == "off" or not images.numel():
            return
        low, high = (float(v) for v in images.detach().aminmax())
        if low >= -INPUT_TOLERANCE and high <= 1 + INPUT_TOLERANCE:
            return
        message = (
            f"the images range from {low:.3g} to {high:.3g}, but a B-cos model takes RGB "
            "images in [0, 1], not normalised (its first layer holds the normalisation) nor "
            "0-255. Pass the images before normalising them (timm: "
            "resolve_data_config(model=model) gives mean 0 and std 1), or set "
            "model.input_check = 'warn' or 'off'."
        )
        if self.input_check == "warn":
            warnings.warn(message, stacklevel=3)
            return
        raise InputRangeError(message)

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

    def _card_facts(self) -> dict[str, Any]:
        """What the model card (:meth:`model_card`) says about this model."""
        config, options = self.config, self.config.options
        source = config.source or "a user-built network"
        arguments = f" with {config.source_kwargs}" if config.source_kwargs else ""
        size = f", {config.input_size[0]} x {config.input_size[1]}" if config.input_size else ""
        names = config.class_names or []
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        details = {
            "source model": f"`{source}`{arguments}",
            "conversion": f"B = {options.b:g}, encoding `{options.encoding}`, max pooling "
            f"`{options.maxpool}`, activations `{options.activations}`",
            "input": f"RGB images in [0, 1] (not normalised), encoded as [x, 1 - x] inside{size}",
            "classes": f"{len(names)} ({shown})" if names else "not recorded",
        }
        return {
            "title": f"B-cos {source}",
            "details": details,
            "explain": ["e = bcosify.explain(model, images)   # the predicted classes"],
        }


def read_config(directory: str | Path) -> ModelConfig:
    """Read ``config.json`` of a saved model, every field checked (:data:`CONFIG_FIELDS`): a
    missing, broken or out-of-range one is a :class:`CheckpointError` naming it."""
    data = read_checked_config(
        directory, MODEL_FORMAT, CONFIG_FIELDS, ("options",), rule=check_source_fields
    )
    try:
        return ModelConfig.from_dict(data)
    except OptionsError as error:  # options that pass their fields but not each other
        path = Path(directory) / CONFIG_FILE
        raise CheckpointError(f"{str(path)!r} is not a valid bcosify config: {error}") from None


def _checking() -> bool:
    """Whether inputs are checked: not while torch.fx, TorchScript or torch.compile trace."""
    compiling = getattr(torch.compiler, "is_compiling", lambda: False)()
    return not (fx_tracing() or torch.jit.is_tracing() or compiling)
