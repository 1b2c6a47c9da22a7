"""Self-attention of text transformers (BERT, GPT-2, Llama), dynamic linear when explaining."""

from __future__ import annotations

from torch import Tensor

from .attention import dynamic_attention
from .mode import ExplanationAware

__all__ = ["TextAttention"]


class TextAttention(ExplanationAware):
    """Mixin for a text model's self-attention: :meth:`attend` with queries and keys detached
    in explanation mode.

    The converter gives a library's attention module (transformers' ``BertSelfAttention``,
    ``GPT2Attention``, ``LlamaAttention``, ...) a subclass of its own class and of this mixin,
    whose ``forward`` projects, rotates (RoPE) and splits heads as the library does and then calls
    :meth:`attend`; its module paths and projections stay where they were.

    Example:
        >>> import torch
        >>> class Attention(TextAttention, torch.nn.Module):
        ...     pass
        >>> q = torch.randn(2, 4, 5, 8)
        >>> kv = torch.randn(2, 2, 5, 8)    # grouped-query attention: 2 key/value heads
        >>> Attention().attend(q, kv, kv, None, 8 ** -0.5, 0.0).shape
        torch.Size([2, 5, 32])
    """

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, dropout: float
    ) -> Tensor:
        """``softmax(q k^T * scale + mask) v`` over heads, merged to ``(N, L, heads * d)``.

        ``q`` is ``(N, heads, L, d)``; ``k`` and ``v`` may have fewer heads (grouped-query
        attention), each shared by ``heads / kv_heads`` query heads. ``mask`` is a boolean
        ``(N, 1, L, L)`` (True: may attend) or additive float mask; ``dropout`` applies in
        training mode only.
        """
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        out = dynamic_attention(
            q,
            k,
            v,
            explaining=self.explaining,
            attn_mask=mask,
            dropout_p=dropout if self.training else 0.0,
            scale=scale,
        )
        return out.transpose(1, 2).flatten(2)
