"""Model sources: build torchvision, timm and CLIP models by name, with weights from enums or
files; CLIP models from any library behind one interface (:mod:`bcosify.models.clip`)."""

from .clip import ClipModel, HFImageFeatures, as_clip
from .saving import load_model, save_model
from .sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SourceInfo,
    class_names_of,
    create,
    input_size_of,
    load_state_dict_strictly,
    load_weights,
    source_info,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipModel",
    "HFImageFeatures",
    "SourceInfo",
    "as_clip",
    "class_names_of",
    "create",
    "input_size_of",
    "load_model",
    "load_state_dict_strictly",
    "load_weights",
    "save_model",
    "source_info",
]
