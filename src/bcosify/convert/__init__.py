"""Conversion of pretrained models into B-cos models: a rule table plus per-family glue."""

from .converter import Conversion, ConversionReport, Replacement, convert
from .loading import load
from .model import BcosModel, ModelConfig
from .options import ConversionOptions
from .rules import Rule, RuleContext, UnsupportedModule, default_rules, keep

__all__ = [
    "BcosModel",
    "Conversion",
    "ConversionOptions",
    "ConversionReport",
    "ModelConfig",
    "Replacement",
    "Rule",
    "RuleContext",
    "UnsupportedModule",
    "convert",
    "default_rules",
    "keep",
    "load",
]
