"""The rule table: the generic rules and every model family's, in one dict."""

from __future__ import annotations

from torch import nn

from .families import family_rules
from .rules import Rule, generic_rules

__all__ = ["default_rules", "rule_table"]


def default_rules() -> dict[type[nn.Module], Rule]:
    """The built-in rule table (a fresh dict: add to it or override entries freely).

    The generic rules (:func:`bcosify.convert.rules.generic_rules`) and the entries of every
    installed model family (:mod:`bcosify.convert.families`: squeeze-and-excitation blocks,
    ``LayerNorm2d``, timm's ``BatchNormAct2d``, CLIP attention, ...).

    Example:
        >>> import torch
        >>> from bcosify.convert.rules import keep
        >>> default_rules()[torch.nn.Identity] is keep
        True
    """
    return {**generic_rules(), **family_rules()}


def rule_table(rules: dict[type[nn.Module], Rule] | None) -> dict[type[nn.Module], Rule]:
    """The built-in rule table with the user's entries over it.

    Example:
        >>> import torch
        >>> from bcosify.convert.rules import keep
        >>> rule_table({torch.nn.Tanh: keep})[torch.nn.Tanh] is keep
        True
    """
    return {**default_rules(), **(rules or {})}
