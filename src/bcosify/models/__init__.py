"""Model sources: build torchvision and timm models by name, with weights from enums or files."""

from .saving import load_model, save_model
from .sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SourceInfo,
    create,
    load_state_dict_strictly,
    load_weights,
    source_info,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SourceInfo",
    "create",
    "load_model",
    "load_state_dict_strictly",
    "load_weights",
    "save_model",
    "source_info",
]
