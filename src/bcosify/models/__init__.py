"""Model sources: build torchvision and timm models by name, with weights from enums or files."""

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
    "load_state_dict_strictly",
    "load_weights",
    "source_info",
]
