"""Layer norm of the average token, applied to every token (for heads of mean-pooled ViTs)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .norm import BcosLayerNorm

__all__ = ["PooledLayerNorm"]


class PooledLayerNorm(BcosLayerNorm):
    """``LayerNorm(mean over tokens)``, computed per token so that the head can follow it.

    A mean-pooled ViT computes ``head(norm(mean_t x_t))``. To keep the explanation per token,
    the converter applies the head to every token and averages afterwards; the norm in between
    must then give, averaged over tokens, exactly ``norm(mean_t x_t)``. This module centres each
    token on its own channel mean (centring commutes with the average) and divides it by the
    standard deviation of the *average* token (one scale per example, detached in explanation
    mode), so ``mean_t PooledLayerNorm(x)_t == LayerNorm(mean_t x)``. Given the average itself
    (no token dimension), it is the layer norm of it.

    Example:
        >>> import torch
        >>> norm = torch.nn.LayerNorm(8)
        >>> x = torch.randn(2, 5, 8)
        >>> pooled = PooledLayerNorm.from_layernorm(BcosLayerNorm(8, bias=True), token_dim=1)
        >>> torch.allclose(pooled(x).mean(1), norm(x.mean(1)), atol=1e-6)
        True
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        *,
        token_dim: int = 1,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, bias=bias, device=device, dtype=dtype
        )
        self.token_dim = token_dim

    @classmethod
    def from_layernorm(cls, norm: BcosLayerNorm, token_dim: int) -> PooledLayerNorm:
        """The pooled-statistics version of ``norm``, with copies of its weight and bias."""
        if not isinstance(norm, BcosLayerNorm):
            raise TypeError(f"from_layernorm expects a BcosLayerNorm, got {type(norm).__name__}")
        reference = norm.weight if norm.weight is not None else norm.bias
        pooled = cls(
            norm.normalized_shape[0],
            norm.eps,
            norm.weight is not None,
            token_dim=token_dim,
            bias=norm.bias is not None,
            device=reference.device if reference is not None else None,
            dtype=reference.dtype if reference is not None else None,
        )
        pooled.load_state_dict(norm.state_dict())
        return pooled

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim <= self.token_dim + 1:  # already pooled (timm's forward_head(pre_logits))
            return super().forward(x)
        average = x.mean(self.token_dim, keepdim=True)
        centred_average = average - average.mean(-1, keepdim=True)
        std = (centred_average.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        centred = x - x.mean(-1, keepdim=True)
        return self._affine(centred / self.detach_if_explaining(std), -1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, token_dim={self.token_dim}"
