"""Constants that enter the signal inside a network: positional embeddings, class tokens."""

from __future__ import annotations

from torch import Tensor, nn

from .trace import traced_constant

__all__ = ["ConstantTerms"]


class ConstantTerms(nn.Module):
    """Hands every constant that is added to or concatenated with the signal to the explainer.

    A vision transformer adds a positional embedding to its tokens and puts class, distillation
    or register tokens in front of them. These are not input, so an explanation must account for
    them as constant terms (their contribution is ``c * dy/dc``). The converter routes each such
    constant through ``terms(name, value, like)``: during an explanation the constant becomes a
    per-example leaf recorded as ``<path of the module that owns this one>.<name>``, where
    ``name`` is the constant's name in that module (``"pos_embed"``), so that the explanation
    names it by the parameter's own path; otherwise ``value`` passes unchanged, so training
    still updates the constant.

    Example:
        >>> import torch
        >>> from bcosify.nn import ExplanationTrace
        >>> terms = ConstantTerms()
        >>> tokens, pos_embed = torch.zeros(2, 4, 8), torch.ones(1, 4, 8)
        >>> with ExplanationTrace(terms) as trace:
        ...     out = tokens + terms("pos_embed", pos_embed, tokens)
        >>> list(trace.constants), tuple(trace.constants["pos_embed"].shape)
        (['pos_embed'], (2, 4, 8))
    """

    names_relative_to_parent = True  # read by ExplanationTrace

    def forward(self, name: str, value: Tensor, like: Tensor) -> Tensor:
        return traced_constant(self, name, value, like)
