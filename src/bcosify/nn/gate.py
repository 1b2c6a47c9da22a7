"""Multiplicative gates such as squeeze-and-excitation, detached in explanation mode."""

from __future__ import annotations

from torch import Tensor, nn

from .mode import ExplanationAware

__all__ = ["DetachedGate"]


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
