"""Explained scores that are not a class logit: the cosine similarity with an embedding."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from ..errors import ExplanationError

__all__ = ["cosine_similarity_target"]


def cosine_similarity_target(embedding: Tensor) -> Callable[[Tensor], Tensor]:
    """A target scoring each output embedding by its cosine similarity with ``embedding``.

    ``embedding`` is one vector ``(D,)`` (for example a text embedding of CLIP), or one per
    example ``(N, D)``. The score of an output ``e`` is ``(e / ||e||) . (t / ||t||)`` with the
    norm ``||e||`` detached: its value is the cosine similarity, and it is linear in ``e``, so for
    a dynamic-linear model the contributions plus the constants sum to it exactly. Passing a
    floating-point tensor as ``target`` to :func:`bcosify.explain` uses this target.

    Example:
        >>> import torch
        >>> score = cosine_similarity_target(torch.tensor([1.0, 0.0]))
        >>> score(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        tensor([1.0000, 0.7071])
    """
    if not embedding.is_floating_point() or embedding.ndim not in (1, 2):
        raise ExplanationError(
            "an embedding target must be a floating-point vector (D,) or one per example "
            f"(N, D); got dtype {embedding.dtype} and shape {tuple(embedding.shape)}"
        )
    direction = F.normalize(embedding.detach(), dim=-1)

    def score(output: Tensor) -> Tensor:
        if output.ndim != 2 or output.shape[1] != direction.shape[-1]:
            raise ExplanationError(
                f"a floating-point target is an embedding, and one of size "
                f"{direction.shape[-1]} needs model outputs of shape (N, {direction.shape[-1]}); "
                f"got {tuple(output.shape)}. To explain classes, pass integer class indices"
            )
        if direction.ndim == 2 and direction.shape[0] not in (1, output.shape[0]):
            raise ExplanationError(
                f"got {direction.shape[0]} target embeddings for a batch of {output.shape[0]}: "
                "pass one embedding (D,), or one per example (N, D)"
            )
        norm = output.norm(dim=1, keepdim=True).detach().clamp_min(1e-12)
        return ((output / norm) * direction.to(output)).sum(1)

    return score
