"""A fixed constant added to every logit."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .trace import traced_constant

__all__ = ["LogitBias"]


class LogitBias(nn.Module):
    """Add a fixed, non-trainable bias to every logit.

    B-cos networks have no biases, so their logits start near zero; for training with binary
    cross-entropy the logits are shifted by ``b = -log(C - 1)``, which makes ``sigmoid(b) = 1 / C``
    (see :meth:`for_classes`). The bias is a constant, not a function of the input: explanations
    report it as a named constant term so that contributions plus constants equal the logit.

    Example:
        >>> import torch
        >>> LogitBias.for_classes(11)(torch.zeros(1, 11))[0, 0]
        tensor(-2.3026)
    """

    bias: Tensor

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.register_buffer("bias", torch.tensor(float(bias)))

    @classmethod
    def for_classes(cls, num_classes: int) -> LogitBias:
        """The bias ``-log(C - 1)`` for ``C`` classes, so that ``sigmoid(bias) = 1 / C``.

        Example:
            >>> round(float(torch.sigmoid(LogitBias.for_classes(10).bias)), 4)
            0.1
        """
        if num_classes < 2:
            raise ValueError(f"a logit bias needs at least 2 classes, got {num_classes}")
        return cls(-math.log(num_classes - 1))

    def forward(self, logits: Tensor) -> Tensor:
        return logits + traced_constant(self, "bias", self.bias, logits)

    def extra_repr(self) -> str:
        return f"bias={float(self.bias):.4f}"
