"""bcosify: turn pretrained networks into inherently interpretable B-cos networks.

The most used names are available at the top level::

    import bcosify
    model, report = bcosify.convert(original)   # the package bcosify.convert, callable
    with bcosify.explanation_mode(model): ...
    explanation = bcosify.explain(model, images, target=labels)
"""

from typing import Any

from . import convert, explain, models, nn
from ._version import __version__
from .convert import (
    BcosCLIP,
    BcosModel,
    BcosTextModel,
    ConversionReport,
    calibrate,
    convert_clip,
    convert_text,
    load,
    load_clip,
)
from .errors import BcosifyError, CheckpointError, ConversionError, ExplanationError
from .explain import Explanation, TextExplanation, explain_text, lazy_attribute
from .nn import explanation_mode
from .nn.compile import compile as compile


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, name)  # BcosAttribution: imported on first use


__all__ = [
    "BcosAttribution",
    "BcosCLIP",
    "BcosModel",
    "BcosTextModel",
    "BcosifyError",
    "CheckpointError",
    "ConversionError",
    "ConversionReport",
    "Explanation",
    "ExplanationError",
    "TextExplanation",
    "__version__",
    "calibrate",
    "convert",
    "convert_clip",
    "convert_text",
    "explain",
    "explain_text",
    "explanation_mode",
    "load",
    "load_clip",
    "models",
    "nn",
]
