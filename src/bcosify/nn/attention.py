"""Attention whose attention matrix is a constant in explanation mode.

``softmax(q k^T * scale) v`` is linear in the values ``v`` once the queries and keys are
constants. In explanation mode the modules here detach ``q`` and ``k`` (and an attention mask,
which only shapes the attention matrix), so the output is dynamic linear in the input: the
B-cos form of attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import ExplanationAware

__all__ = [
    "BcosMultiheadAttention",
    "BcosWindowAttention",
    "DynamicAttention",
    "dynamic_attention",
    "split_heads",
]


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
    enable_gqa: bool = False,
) -> Tensor:
    """``softmax(q k^T * scale) v`` with ``q``, ``k`` and the mask detached when ``explaining``.

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
        attn_mask = attn_mask.detach() if attn_mask is not None else None
    # enable_gqa is passed only when set: torch < 2.5 does not know the argument
    extra = {"enable_gqa": True} if enable_gqa else {}
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        **extra,
    )


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``(N, L, heads * d)`` -> ``(N, heads, L, d)``.

    Example:
        >>> split_heads(torch.zeros(2, 5, 12), 3).shape
        torch.Size([2, 3, 5, 4])
    """
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


class DynamicAttention(ExplanationAware, nn.Module):
    """``F.scaled_dot_product_attention`` as a module, dynamic linear in explanation mode.

    The converter replaces every functional ``scaled_dot_product_attention`` call on the signal
    path by a call of this module with the same arguments (see :func:`dynamic_attention`).

    Example:
        >>> import torch
        >>> q = k = v = torch.randn(2, 3, 5, 4)
        >>> torch.allclose(DynamicAttention()(q, k, v),
        ...                torch.nn.functional.scaled_dot_product_attention(q, k, v))
        True
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        return dynamic_attention(
            query,
            key,
            value,
            explaining=self.explaining,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )


class BcosMultiheadAttention(ExplanationAware, nn.Module):
    """``nn.MultiheadAttention`` with its own projection modules, dynamic linear when explaining.

    Takes the arguments of ``nn.MultiheadAttention.forward`` and returns ``(output, weights)``
    like it. The query, key and value projections are separate modules (plain linear layers or
    B-cos layers: the converter decides), so self- and cross-attention both work; ``out_proj``
    is applied to the concatenated heads. In explanation mode queries and keys are detached.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> attention = BcosMultiheadAttention(
        ...     nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8),
        ...     num_heads=2, batch_first=True)
        >>> x = torch.randn(3, 5, 8)
        >>> out, weights = attention(x, x, x, need_weights=False)
        >>> out.shape, weights
        (torch.Size([3, 5, 8]), None)
    """

    def __init__(
        self,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        out_proj: nn.Module,
        num_heads: int,
        *,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = q_proj, k_proj, v_proj
        self.out_proj = out_proj
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = (
            split_heads(projection(t), self.num_heads)
            for projection, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        )
        mask = self._additive_mask(attn_mask, key_padding_mask, q)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # the weights are asked for: compute the attention matrix explicitly
            scores = self.detach_if_explaining(q) @ self.detach_if_explaining(k).transpose(-2, -1)
            scores = scores * q.shape[-1] ** -0.5
            if mask is not None:
                scores = scores + self.detach_if_explaining(mask)
            weights = F.dropout(scores.softmax(-1), dropout_p, self.training)
            out = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            out = dynamic_attention(
                q,
                k,
                v,
                explaining=self.explaining,
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal and mask is None,
            )
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _additive_mask(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, q: Tensor
    ) -> Tensor | None:
        """Both masks of ``nn.MultiheadAttention`` as one additive mask ``(B|1, H|1, L, S)``.

        As there, a boolean mask marks with True the positions that may *not* be attended to,
        and a float mask is added to the attention scores.
        """
        batch, heads, length = q.shape[:3]
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            if mask.ndim == 3:  # (B * H, L, S), batch-major as in nn.MultiheadAttention
                mask = mask.view(batch, heads, length, -1)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, q.dtype).view(batch, 1, 1, -1)
            mask = padding if mask is None else mask + padding
        return mask

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, dropout={self.dropout}, batch_first={self.batch_first}"


class BcosWindowAttention(ExplanationAware, nn.Module):
    """Swin's (shifted) window self-attention, dynamic linear in explanation mode.

    The function of torchvision's ``ShiftedWindowAttention``: tokens ``(B, H, W, C)`` are padded
    to whole windows, cyclically shifted by ``shift_size``, and attend within each window with a
    learned relative position bias; after a shift, tokens from different regions of the image
    do not attend to each other (their scores get -100, as in Swin). The bias and the shift mask
    only shape the attention matrix, which is a constant in explanation mode (queries and keys
    detached); the values and ``proj`` are the explained path.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> table, index = torch.zeros(9, 2), torch.zeros(16, dtype=torch.long)
        >>> attention = BcosWindowAttention(
        ...     nn.Linear(8, 24), nn.Linear(8, 8), table, index, [2, 2], [1, 1], num_heads=2)
        >>> attention(torch.randn(1, 5, 5, 8)).shape
        torch.Size([1, 5, 5, 8])
    """

    relative_position_index: Tensor

    def __init__(
        self,
        qkv: nn.Module,
        proj: nn.Module,
        relative_position_bias_table: Tensor,
        relative_position_index: Tensor,
        window_size: list[int],
        shift_size: list[int],
        num_heads: int,
        *,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.relative_position_bias_table = nn.Parameter(relative_position_bias_table.clone())
        self.register_buffer("relative_position_index", relative_position_index.clone())
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads = num_heads
        self.attention_dropout, self.dropout = attention_dropout, dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        wh, ww = self.window_size
        size = wh * ww
        x = F.pad(x, (0, 0, 0, -width % ww, 0, -height % wh))
        padded = x.shape[1:3]
        # a window as large as the feature map has nothing to shift
        shift = [
            s if w < p else 0
            for s, w, p in zip(self.shift_size, self.window_size, padded, strict=True)
        ]
        if any(shift):
            x = torch.roll(x, (-shift[0], -shift[1]), (1, 2))
        grid = (padded[0] // wh, padded[1] // ww)
        windows = x.view(batch, grid[0], wh, grid[1], ww, channels).transpose(2, 3)
        windows = windows.reshape(batch, grid[0] * grid[1], size, channels)
        q, k, v = self.qkv(windows).unflatten(-1, (3, self.num_heads, -1)).movedim(-3, 0)
        q, k, v = (t.transpose(-3, -2) for t in (q, k, v))  # (B, windows, heads, tokens, dim)
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(size, size, -1).permute(2, 0, 1)
        if any(shift):
            bias = bias + self._shift_mask(padded, shift, x.device, x.dtype)[:, None]
        out = dynamic_attention(
            q,
            k,
            v,
            explaining=self.explaining,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        out = self.proj(out.transpose(-3, -2).flatten(-2))
        out = F.dropout(out, self.dropout, self.training)
        out = out.view(batch, grid[0], grid[1], wh, ww, channels).transpose(2, 3)
        out = out.reshape(batch, padded[0], padded[1], channels)
        if any(shift):
            out = torch.roll(out, (shift[0], shift[1]), (1, 2))
        return out[:, :height, :width].contiguous()

    def _shift_mask(
        self, padded: torch.Size, shift: list[int], device: torch.device, dtype: torch.dtype
    ) -> Tensor:
        """-100 between tokens of a window that came from different regions before the shift."""
        labels = []
        for length, window, step in zip(padded, self.window_size, shift, strict=True):
            position = torch.arange(length, device=device)
            # regions [0, L - window), [L - window, L - shift), [L - shift, L); one if unshifted
            region = (position >= length - window).long() + (position >= length - step).long()
            labels.append(region if step else torch.zeros_like(region))
        region = labels[0][:, None] * 3 + labels[1][None, :]
        wh, ww = self.window_size
        region = region.view(padded[0] // wh, wh, padded[1] // ww, ww).transpose(1, 2)
        region = region.reshape(-1, wh * ww)
        different = region[:, :, None] != region[:, None, :]
        return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(
            different, -100.0
        )

    def extra_repr(self) -> str:
        return (
            f"window_size={self.window_size}, shift_size={self.shift_size}, "
            f"num_heads={self.num_heads}"
        )


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)
