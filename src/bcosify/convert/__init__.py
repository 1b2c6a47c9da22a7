"""Conversion of pretrained models into B-cos models: a rule table plus per-family glue.

The package is callable: ``bcosify.convert(model)`` is :func:`bcosify.convert.convert`.
"""

from .calibrate import CalibrationResult, calibrate
from .clip import BcosCLIP, ClipConversion, convert_clip, load_clip
from .converter import Conversion, ConversionReport, Replacement, convert
from .families import Support, supported
from .loading import load
from .model import BcosModel, ModelConfig
from .options import ConversionOptions
from .rules import Rule, RuleContext, UnsupportedModule, keep
from .table import default_rules
from .text import convert_text, load_text
from .text_model import BcosTextModel, TextConversionOptions, TextModelConfig

__all__ = [
    "BcosCLIP",
    "BcosModel",
    "BcosTextModel",
    "CalibrationResult",
    "ClipConversion",
    "Conversion",
    "ConversionOptions",
    "ConversionReport",
    "ModelConfig",
    "Replacement",
    "Rule",
    "RuleContext",
    "Support",
    "TextConversionOptions",
    "TextModelConfig",
    "UnsupportedModule",
    "calibrate",
    "convert",
    "convert_clip",
    "convert_text",
    "default_rules",
    "keep",
    "load",
    "load_clip",
    "load_text",
    "supported",
]

from .._callable import make_callable

make_callable(__name__, convert)
