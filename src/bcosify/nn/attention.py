"""Attention whose attention matrix is a constant in explanation mode."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dynamic_attention"]


def dynamic_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    explaining: bool,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``softmax(q k^T * scale) v`` with ``q`` and ``k`` detached when ``explaining``.

    With queries and keys detached the attention matrix is a constant, so the output is linear
    in the values ``v``: the dynamic-linear form of attention. Arguments and shapes are those of
    ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels are used either way).
    Modules call it with ``explaining=self.explaining``.

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(1, 2, 4, 8)
        >>> dynamic_attention(q, k, v, explaining=True).shape
        torch.Size([1, 2, 4, 8])
    """
    if explaining:
        q, k = q.detach(), k.detach()
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
