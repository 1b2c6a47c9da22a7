"""The token embedding of a text model: the input its explanations are taken with respect to."""

from __future__ import annotations

from torch import Tensor, nn

from .mode import ExplanationAware
from .trace import traced_input

__all__ = ["BcosTokenEmbedding"]


def _per_token(contributions: Tensor) -> Tensor:
    """Contributions on the embedded tokens ``(N, L, D)``, summed per token ``(N, L)``."""
    return contributions.sum(-1)


class BcosTokenEmbedding(ExplanationAware, nn.Embedding):
    """``nn.Embedding`` whose output is the explained input of the model.

    A text model's input is discrete, so its explanation is taken with respect to the embedded
    tokens: during :func:`bcosify.explain_text` the embedding's output is the leaf whose
    contributions sum (with the model's named constants, such as positional embeddings) to the
    explained logit; contributions summed over the embedding dimension are the per-token
    contributions. Outside an explanation it is an ordinary embedding.

    Example:
        >>> import torch
        >>> embedding = BcosTokenEmbedding.from_embedding(torch.nn.Embedding(10, 4))
        >>> embedding(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 4])
    """

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> BcosTokenEmbedding:
        """The same embedding (its weight the same parameter, so ties are kept), explained.

        Example:
            >>> import torch
            >>> original = torch.nn.Embedding(10, 4, padding_idx=0)
            >>> BcosTokenEmbedding.from_embedding(original).weight is original.weight
            True
        """
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(
                f"from_embedding expects an nn.Embedding, got {type(embedding).__name__}"
            )
        layer = cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            padding_idx=embedding.padding_idx,
            max_norm=embedding.max_norm,
            norm_type=embedding.norm_type,
            scale_grad_by_freq=embedding.scale_grad_by_freq,
            sparse=embedding.sparse,
            _weight=embedding.weight.detach(),
        )
        layer.weight = embedding.weight
        return layer

    def forward(self, input: Tensor) -> Tensor:
        return traced_input(self, super().forward(input), _per_token)
