"""Multiplicative gates such as squeeze-and-excitation, detached in explanation mode."""

from __future__ import annotations

from torch import Tensor, nn

from .mode import ExplanationAware

__all__ = ["DetachedFactor", "DetachedGate"]


class DetachedGate(ExplanationAware, nn.Module):
    """``y = x * gate(x)``, with ``gate(x)`` a constant in explanation mode.

    ``gate`` is any module that maps ``x`` to a tensor broadcastable against it (for example the
    ``sigmoid(MLP(pool(x)))`` of a squeeze-and-excitation block). The gate keeps its own
    parameters, biases included: it only scales the input, it is not on the explained path.

    Example:
        >>> import torch
        >>> gate = DetachedGate(torch.nn.Sigmoid())
        >>> gate(torch.zeros(2))
        tensor([0., 0.])
    """

    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        return x * self.detach_if_explaining(self.gate(x))


class DetachedFactor(ExplanationAware, nn.Module):
    """Its input, detached in explanation mode: the gate of a gated product ``x_a * gate``.

    The converter routes the activated branch of a gated MLP (SwiGLU's ``silu(x_b)``, GEGLU's
    ``gelu(x_b)``, a sigmoid gate) through it, so that in explanation mode the product is linear
    in the other branch.

    Example:
        >>> import torch
        >>> from bcosify.nn import explanation_mode
        >>> gate = DetachedFactor()
        >>> x = torch.ones(2, requires_grad=True)
        >>> with explanation_mode(gate):
        ...     gate(x).requires_grad
        False
    """

    def forward(self, x: Tensor) -> Tensor:
        return self.detach_if_explaining(x)
