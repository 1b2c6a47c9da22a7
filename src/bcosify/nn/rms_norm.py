"""RMS norm (Llama-style decoders), dynamic linear in explanation mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .mode import ExplanationAware

__all__ = ["BcosRMSNorm"]


class BcosRMSNorm(ExplanationAware, nn.Module):
    """``y = weight * x / sqrt(mean(x^2) + eps)`` over the last dimension, the root mean square
    detached in explanation mode.

    RMS norm has no mean subtraction and no bias, so with its root mean square a constant it is
    linear in ``x``. As in Llama's ``LlamaRMSNorm``, the statistics are computed in float32 and
    the result is cast back to the input's type before the scale.

    Example:
        >>> import torch
        >>> norm = BcosRMSNorm(8)
        >>> x = torch.randn(2, 3, 8)
        >>> y = norm(x)
        >>> torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-4)
        True
    """

    weight: Tensor | None

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        *,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = (int(normalized_shape),)
        self.eps = float(eps)
        weight = torch.ones(normalized_shape, device=device, dtype=dtype)
        self.register_parameter("weight", nn.Parameter(weight) if elementwise_affine else None)

    @classmethod
    def from_rmsnorm(cls, norm: nn.Module, eps: float) -> BcosRMSNorm:
        """The B-cos RMS norm with the scale of ``norm`` (any module with a ``weight`` vector,
        such as ``LlamaRMSNorm``) and its ``eps``.

        Example:
            >>> import torch
            >>> norm = torch.nn.RMSNorm(4, eps=1e-5)
            >>> x = torch.randn(3, 4)
            >>> torch.allclose(BcosRMSNorm.from_rmsnorm(norm, 1e-5)(x), norm(x), atol=1e-6)
            True
        """
        weight = getattr(norm, "weight", None)
        if weight is not None and weight.ndim != 1:
            raise ValueError(
                f"an RMS norm's weight must be a vector, got shape {tuple(weight.shape)}"
            )
        size = weight.shape[0] if weight is not None else norm.normalized_shape[-1]
        layer = cls(
            size,
            eps,
            weight is not None,
            device=None if weight is None else weight.device,
            dtype=None if weight is None else weight.dtype,
        )
        if weight is not None:
            with torch.no_grad():
                layer.weight.copy_(weight)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        inverse_rms = (h.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt()
        h = (h * self.detach_if_explaining(inverse_rms)).to(dtype)
        return h if self.weight is None else self.weight * h

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.weight is not None}"
