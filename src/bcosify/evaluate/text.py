"""How well explanations of text classifiers score (the explainers themselves are in
:mod:`bcosify.evaluate.explainers`, ``build_explainer(name, model, "text")``).

Metrics (per example, for :func:`~bcosify.evaluate.bootstrap_interval`):

- :func:`token_pointing_game`: 1 when the token with the largest attribution among the
  candidates (the words, not the special tokens) is an evidence token;
- :func:`erasure_scores`: comprehensiveness, ``p(x) - p(x without the top k% tokens)``
  (higher: the explanation found what the model uses) and sufficiency, ``p(x) - p(only the
  top k% tokens)`` (lower: those tokens suffice), averaged over k in 1, 5, 10, 20 and 50% as
  in ERASER (DeYoung et al., 2020); tokens are removed from the sequence, not masked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import _evaluation
from ..models.text import text_logits
from ..nn import explanation_mode
from ._common import probabilities, resolve_probability

__all__ = [
    "ERASURE_FRACTIONS",
    "ErasureScores",
    "erasure_scores",
    "evidence_share",
    "timed_attribution",
    "token_pointing_game",
]

ERASURE_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)


def token_pointing_game(attributions: Tensor, evidence: Tensor, candidates: Tensor) -> Tensor:
    """Per text, 1.0 when its largest attribution among the ``candidates`` (the word tokens)
    falls on an ``evidence`` token, else 0.0. All three are ``(N, L)``.

    Example:
        >>> a = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.1, 0.3]])
        >>> evidence = torch.tensor([[False, True, False], [False, False, True]])
        >>> token_pointing_game(a, evidence, torch.ones(2, 3, dtype=torch.bool))
        tensor([1., 0.])
    """
    if not (attributions.shape == evidence.shape == candidates.shape):
        raise EvaluationError("attributions, evidence and candidates must all be (N, L)")
    if not bool(candidates.any(1).all()):
        raise EvaluationError("every text needs at least one candidate token")
    masked = attributions.float().masked_fill(~candidates.bool(), float("-inf"))
    best = masked.argmax(1)
    return evidence.bool().gather(1, best[:, None]).squeeze(1).float()


def evidence_share(attributions: Tensor, evidence: Tensor, candidates: Tensor) -> Tensor:
    """Per text, the share of the positive attribution of the candidates that lies on the
    evidence tokens (0 when there is none).

    Example:
        >>> evidence_share(torch.tensor([[3.0, 1.0, -2.0]]), torch.tensor([[True, False, False]]),
        ...                torch.ones(1, 3, dtype=torch.bool))
        tensor([0.7500])
    """
    positive = attributions.float().clamp_min(0) * candidates.float()
    total = positive.sum(1)
    return torch.where(total > 0, (positive * evidence.float()).sum(1) / total, 0.0)


@dataclass(frozen=True)
class ErasureScores:
    """Comprehensiveness and sufficiency per text, each averaged over the fractions.

    Attributes:
        comprehensiveness: ``p(x) - p(x without the top tokens)``, ``(N,)``: higher is better.
        sufficiency: ``p(x) - p(only the top tokens)``, ``(N,)``: lower is better.
        fractions: the fractions of the candidate tokens that were removed or kept.
    """

    comprehensiveness: Tensor
    sufficiency: Tensor
    fractions: tuple[float, ...]


def _pack(ids: Tensor, keep: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """The kept tokens of every row moved to the front (in order), the rest padding."""
    order = torch.sort((~keep).long(), dim=1, stable=True).indices
    packed = ids.gather(1, order)
    mask = keep.gather(1, order)
    return packed.masked_fill(~mask, pad), mask.long()


@torch.no_grad()
def erasure_scores(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    attributions: Tensor,
    target: Tensor,
    candidates: Tensor,
    *,
    pad_token_id: int,
    fractions: Sequence[float] = ERASURE_FRACTIONS,
    probability: str = "auto",
) -> ErasureScores:
    """Comprehensiveness and sufficiency of ``attributions`` (ERASER, DeYoung et al., 2020).

    For each fraction ``k``, the ``max(1, ceil(k * n))`` candidate tokens (of a text's ``n``)
    with the largest attributions are removed from the sequence (comprehensiveness), or are
    the only candidates kept (sufficiency); tokens that are not candidates (``[CLS]``,
    ``[SEP]``) always stay. ``probability`` is how logits become probabilities (``"auto"``:
    sigmoid for a B-cos model, trained with binary cross-entropy, softmax otherwise).

    Example:
        >>> import torch
        >>> class Count(torch.nn.Module):   # class 1 scores the token 7s
        ...     def forward(self, ids, mask):
        ...         sevens = ((ids == 7) & mask.bool()).sum(1).float()
        ...         return torch.stack([torch.zeros_like(sevens), sevens], 1)
        >>> ids, mask = torch.tensor([[7, 5, 5, 5]]), torch.ones(1, 4, dtype=torch.long)
        >>> right = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> s = erasure_scores(Count(), ids, mask, right, torch.tensor([1]), mask.bool(),
        ...                    pad_token_id=0, fractions=[0.25])
        >>> round(float(s.comprehensiveness), 3), round(float(s.sufficiency), 3)
        (0.231, 0.0)
    """
    if not fractions or not all(0 < f <= 1 for f in fractions):
        raise EvaluationError(f"fractions must be in (0, 1], got {list(fractions)}")
    kind = resolve_probability(model, probability)
    device = device_of(model) if any(True for _ in model.parameters()) else input_ids.device
    ids, mask = input_ids.to(device), attention_mask.to(device).bool()
    candidates = candidates.to(device).bool() & mask
    target = torch.as_tensor(target, device=device).long()
    rows = torch.arange(len(ids), device=device)

    def score(keep: Tensor) -> Tensor:
        packed, packed_mask = _pack(ids, keep, pad_token_id)
        length = int(packed_mask.sum(1).max())
        logits = text_logits(model, packed[:, :length], packed_mask[:, :length])
        return probabilities(logits, kind)[rows, target]

    with _evaluation(model), explanation_mode(model, enabled=False):
        full = score(mask)
        ranked = attributions.to(device).float().masked_fill(~candidates, float("-inf"))
        order = ranked.argsort(1, descending=True)
        rank = order.argsort(1)  # each token's place in the ranking
        counts = candidates.sum(1)
        comprehensiveness, sufficiency = torch.zeros(len(ids)), torch.zeros(len(ids))
        for fraction in fractions:
            k = (counts.float() * fraction).ceil().clamp_min(1)
            top = (rank < k[:, None]) & candidates
            comprehensiveness += (full - score(mask & ~top)).cpu()
            sufficiency += (full - score((mask & ~candidates) | top)).cpu()
    return ErasureScores(
        comprehensiveness / len(fractions), sufficiency / len(fractions), tuple(fractions)
    )


def timed_attribution(
    explainer: Any, input_ids: Tensor, attention_mask: Tensor, target: Tensor
) -> tuple[Tensor, float]:
    """``explainer.attribute(...)`` and the seconds it took per text.

    Example:
        >>> import torch
        >>> class Const:
        ...     name = "const"
        ...     def attribute(self, ids, mask, target): return ids.float()
        >>> values, seconds = timed_attribution(Const(), torch.ones(2, 3, dtype=torch.long),
        ...                                     torch.ones(2, 3), torch.tensor([0, 1]))
        >>> values.shape, seconds >= 0
        (torch.Size([2, 3]), True)
    """
    start = time.perf_counter()
    values = explainer.attribute(input_ids, attention_mask, target)
    return values, (time.perf_counter() - start) / max(len(input_ids), 1)
