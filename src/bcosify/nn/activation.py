"""Gated activations ``x * g(x)`` whose gate is detached in explanation mode.

ReLU and max pooling need no counterpart: they already select inputs, and their gradient is
exactly the selection. Activations without a gated form (tanh, sigmoid as an output) have no
dynamic-linear counterpart at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import ExplanationAware

__all__ = [
    "BcosGELU",
    "BcosHardswish",
    "BcosMish",
    "BcosQuickGELU",
    "BcosReLU6",
    "BcosSiLU",
    "BcosSquaredReLU",
    "GatedActivation",
]

# QuickGELU is defined with this slope: x * sigmoid(1.702 x) approximates GELU (Hendrycks & Gimpel)
QUICK_GELU_SLOPE = 1.702


class GatedActivation(ExplanationAware, nn.Module):
    """Base class for ``y = x * gate(x)``; the gate is a constant in explanation mode.

    Outside explanation mode the fused PyTorch activation runs, with its true gradient.
    Subclasses define :meth:`gate` and :meth:`activation`.

    Example:
        >>> import torch
        >>> class Sigmoidal(GatedActivation):
        ...     def gate(self, x): return torch.sigmoid(x)
        ...     def activation(self, x): return x * torch.sigmoid(x)
        >>> Sigmoidal()(torch.zeros(2))
        tensor([0., 0.])
    """

    def gate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def activation(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.explaining:
            return x * self.gate(x).detach()
        return self.activation(x)


class BcosGELU(GatedActivation):
    """GELU, ``x * Phi(x)``, with ``approximate="none"`` or ``"tanh"`` as in ``nn.GELU``.

    Example:
        >>> import torch
        >>> x = torch.randn(5)
        >>> torch.allclose(BcosGELU()(x), torch.nn.functional.gelu(x))
        True
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def gate(self, x: Tensor) -> Tensor:
        if self.approximate == "tanh":
            return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
        return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))

    def activation(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class BcosSiLU(GatedActivation):
    """SiLU (swish), ``x * sigmoid(x)``.

    Example:
        >>> import torch
        >>> x = torch.randn(5)
        >>> torch.allclose(BcosSiLU()(x), torch.nn.functional.silu(x))
        True
    """

    def gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def activation(self, x: Tensor) -> Tensor:
        return F.silu(x)


class BcosHardswish(GatedActivation):
    """Hardswish, ``x * relu6(x + 3) / 6``.

    Example:
        >>> import torch
        >>> x = torch.randn(5)
        >>> torch.allclose(BcosHardswish()(x), torch.nn.functional.hardswish(x))
        True
    """

    def gate(self, x: Tensor) -> Tensor:
        return F.hardsigmoid(x)

    def activation(self, x: Tensor) -> Tensor:
        return F.hardswish(x)


class BcosMish(GatedActivation):
    """Mish, ``x * tanh(softplus(x))``.

    Example:
        >>> import torch
        >>> x = torch.randn(5)
        >>> torch.allclose(BcosMish()(x), torch.nn.functional.mish(x))
        True
    """

    def gate(self, x: Tensor) -> Tensor:
        return torch.tanh(F.softplus(x))

    def activation(self, x: Tensor) -> Tensor:
        return F.mish(x)


class BcosReLU6(GatedActivation):
    """ReLU6, ``min(max(x, 0), 6)``, written as ``x * gate`` with ``gate = relu6(x) / x``.

    Where the clamp at 6 is active the output is a constant that no input pixel would be
    credited for; as a detached gate it becomes a dynamic scaling of ``x`` instead, and the
    contributions still sum to the output.

    Example:
        >>> import torch
        >>> x = torch.tensor([-1.0, 0.0, 3.0, 9.0])
        >>> BcosReLU6()(x)
        tensor([0., 0., 3., 6.])
    """

    def gate(self, x: Tensor) -> Tensor:
        safe = torch.where(x > 0, x, torch.ones_like(x))
        return torch.where(x > 0, F.relu6(x) / safe, torch.zeros_like(x))

    def activation(self, x: Tensor) -> Tensor:
        return F.relu6(x)


class BcosQuickGELU(GatedActivation):
    """QuickGELU, ``x * sigmoid(1.702 x)``: the activation of OpenAI's CLIP models.

    Example:
        >>> import torch
        >>> x = torch.randn(5)
        >>> torch.allclose(BcosQuickGELU()(x), x * torch.sigmoid(1.702 * x))
        True
    """

    def gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(QUICK_GELU_SLOPE * x)

    def activation(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class BcosSquaredReLU(GatedActivation):
    """The scaled squared ReLU, ``scale * relu(x) ** 2`` (StarReLU of MetaFormer without its
    bias), written as ``x * gate`` with ``gate = scale * relu(x)``.

    Example:
        >>> import torch
        >>> x = torch.tensor([-1.0, 0.5, 2.0])
        >>> BcosSquaredReLU(torch.tensor([0.5]))(x).detach()
        tensor([0.0000, 0.1250, 2.0000])
    """

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())

    def gate(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x)

    def activation(self, x: Tensor) -> Tensor:
        return self.scale * F.relu(x) ** 2
