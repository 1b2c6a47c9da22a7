"""Attention pooling (CLIP's ResNet head), dynamic linear in explanation mode."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import dynamic_attention, split_heads
from .mode import ExplanationAware
from .trace import traced_constant

__all__ = ["BcosAttentionPool2d"]


class BcosAttentionPool2d(ExplanationAware, nn.Module):
    """The attention pooling of CLIP's ResNets, with its positional embedding reported by name.

    The feature map ``(N, C, H, W)`` becomes ``H * W`` tokens, the average token is put in front
    and the learned positional embedding is added to all of them; the average token then attends
    over every token, and ``c_proj`` maps its output to the embedding. This computes what
    open_clip's ``AttentionPool2d`` computes (whose other query rows are thrown away). The
    positional embedding is a constant: explanations report it as
    ``<path>.positional_embedding``. In explanation mode queries and keys are detached, so the
    output is linear in the values.

    Attributes:
        reported_constants: the names under which explanations report this module's constants
            (relative to its path), for the conversion report.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> pool = BcosAttentionPool2d(
        ...     nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4),
        ...     torch.zeros(5, 8), num_heads=2)
        >>> pool(torch.randn(3, 8, 2, 2)).shape
        torch.Size([3, 4])
    """

    reported_constants: tuple[str, ...] = ("positional_embedding",)

    def __init__(
        self,
        q_proj: nn.Module,
        k_proj: nn.Module,
        v_proj: nn.Module,
        c_proj: nn.Module,
        positional_embedding: Tensor,
        num_heads: int,
    ) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.c_proj = q_proj, k_proj, v_proj, c_proj
        self.positional_embedding = nn.Parameter(positional_embedding.detach().clone())
        self.num_heads = num_heads

    def reset_parameters(self) -> None:
        """A fresh positional embedding, drawn as open_clip draws it (std ``C ** -0.5``)."""
        with torch.no_grad():
            self.positional_embedding.normal_(std=self.positional_embedding.shape[-1] ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1)
        position = traced_constant(
            self, "positional_embedding", self.positional_embedding[None], tokens
        )
        tokens = tokens + position.to(tokens.dtype)
        # only the average token's output is kept, so it is the only query computed
        q = split_heads(self.q_proj(tokens[:, :1]), self.num_heads)
        k = split_heads(self.k_proj(tokens), self.num_heads)
        v = split_heads(self.v_proj(tokens), self.num_heads)
        out = dynamic_attention(q, k, v, explaining=self.explaining)
        return self.c_proj(out.transpose(1, 2).flatten(2))[:, 0]

    def extra_repr(self) -> str:
        tokens, channels = self.positional_embedding.shape
        return f"tokens={tokens}, channels={channels}, num_heads={self.num_heads}"
