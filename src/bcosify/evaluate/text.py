"""Explanations of text classifiers: the B-cos model's own and post-hoc baselines, and how to
score them (a token pointing game, comprehensiveness and sufficiency).

Every text explainer's ``attribute(input_ids, attention_mask, target)`` returns one float32
value per token ``(N, L)``, detached. The post-hoc methods (Captum's Saliency, InputXGradient,
IntegratedGradients, DeepLift, Occlusion and LIME) explain the model as a function of its token
embedding's output: a forward hook replaces the embedding's output by the tensor Captum
perturbs or differentiates (what ``LayerIntegratedGradients`` does for one method), so every
method sees the same input, the position and type embeddings are added by the model as
usual, and attributions are summed over the embedding dimension per token. Baselines (for
IntegratedGradients, DeepLift, Occlusion and LIME) are zero embeddings.

Metrics (per example, for :func:`~bcosify.evaluate.bootstrap_interval`):

- :func:`token_pointing_game`: 1 when the token with the largest attribution among the
  candidates (the words, not the special tokens) is an evidence token;
- :func:`erasure_scores`: comprehensiveness, ``p(x) - p(x without the top k% tokens)``
  (higher: the explanation found what the model uses) and sufficiency, ``p(x) - p(only the
  top k% tokens)`` (lower: those tokens suffice), averaged over k in 1, 5, 10, 20 and 50% as
  in ERASER (DeYoung et al., 2020); tokens are removed from the sequence, not masked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import _evaluation
from ..explain.text import explain_tokens
from ..models.text import text_logits
from ..nn import BcosTokenEmbedding, explanation_mode
from ._common import check_positive, has_bcos_layers, probabilities, resolve_probability
from .explainers import _captum, _Explainer, _WeightedRidge, posthoc

__all__ = [
    "ERASURE_FRACTIONS",
    "TEXT_EXPLAINER_NAMES",
    "ErasureScores",
    "TextExplainer",
    "build_text_explainer",
    "erasure_scores",
    "evidence_share",
    "timed_attribution",
    "token_embedding",
    "token_pointing_game",
]

TEXT_EXPLAINER_NAMES: tuple[str, ...] = (
    "bcos",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "deeplift",
    "occlusion",
    "lime",
)
ERASURE_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5)


@runtime_checkable
class TextExplainer(Protocol):
    """An attribution method for one text classifier: ``attribute(input_ids, attention_mask,
    target)`` gives one value per token ``(N, L)``, detached float32, leaving no gradient,
    hook or mode flag behind."""

    name: str

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor: ...


def token_embedding(model: nn.Module) -> nn.Module:
    """The module whose output is a text model's embedded tokens: a converted model's
    :class:`~bcosify.nn.BcosTokenEmbedding`, else ``get_input_embeddings()`` of the transformers
    model inside.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> token_embedding(BertForSequenceClassification(config))
        Embedding(30, 16, padding_idx=0)
    """
    for module in model.modules():
        if isinstance(module, BcosTokenEmbedding):
            return module
        get = getattr(module, "get_input_embeddings", None)
        if callable(get):
            return get()
    raise EvaluationError(
        f"{type(model).__name__} has no token embedding (a transformers model's "
        "get_input_embeddings()); text explainers need one"
    )


class _Embedded(nn.Module):
    """The model as a function of its token embedding's output (Captum perturbs that)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._embedding = [token_embedding(model)]  # a list: not a second submodule path

    def forward(self, embeddings: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            return embeddings

        handle = self._embedding[0].register_forward_hook(replace)
        try:
            return text_logits(self.model, input_ids, attention_mask)
        finally:
            handle.remove()

    def embed(self, input_ids: Tensor) -> Tensor:
        with torch.no_grad():
            return self._embedding[0](input_ids).detach()


class _TextExplainer:
    """Checks the batch, runs the method in evaluation mode (explanation mode off, as a
    post-hoc method sees the model), and leaves the model as found."""

    name = ""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self.model = model
        self.options = options

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor:
        ids, mask, targets = _check_tokens(input_ids, attention_mask, target, self.name)
        device = device_of(self.model)
        with posthoc(self.model):
            result = self._attribute(ids.to(device), mask.to(device), targets.to(device))
        return result.detach().to(device=input_ids.device, dtype=torch.float32)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    __repr__ = _Explainer.__repr__  # the name and the options, as for images


class _BcosTextExplainer(_TextExplainer):
    name = "bcos"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if not has_bcos_layers(model):
            raise EvaluationError(
                "the 'bcos' explainer is the model's own explanation and needs a B-cos model: "
                "convert it with bcosify.convert, or use a post-hoc method: "
                + ", ".join(TEXT_EXPLAINER_NAMES[1:])
            )

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor:
        ids, mask, targets = _check_tokens(input_ids, attention_mask, target, self.name)
        e = explain_tokens(self.model, ids, mask, targets)
        return e.contributions.to(device=input_ids.device, dtype=torch.float32)


class _GradientExplainer(_TextExplainer):
    """Saliency, InputXGradient, IntegratedGradients and DeepLift on the embedded tokens."""

    def __init__(self, model: nn.Module, method: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.name = method
        self._forward = _Embedded(model)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        captum = _captum()
        embeddings = self._forward.embed(ids)
        extra = {"target": target, "additional_forward_args": (ids, mask)}
        if self.name == "saliency":
            # the gradient's magnitude per token (Saliency takes absolute values)
            values = captum.Saliency(self._forward).attribute(embeddings, abs=True, **extra)
        elif self.name == "input_x_gradient":
            values = captum.InputXGradient(self._forward).attribute(embeddings, **extra)
        elif self.name == "integrated_gradients":
            values = captum.IntegratedGradients(self._forward).attribute(
                embeddings,
                baselines=torch.zeros_like(embeddings),
                n_steps=self.options["steps"],
                internal_batch_size=self.options["internal_batch_size"],
                **extra,
            )
        else:
            values = captum.DeepLift(self._forward).attribute(
                embeddings, baselines=torch.zeros_like(embeddings), **extra
            )
        return values.sum(-1)


class _OcclusionTextExplainer(_TextExplainer):
    """Each token's embedding set to zero in turn: the drop of the target's logit."""

    name = "occlusion"

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        forward = _Embedded(self.model)
        embeddings = forward.embed(ids)

        def scores(batch: Tensor) -> Tensor:  # Captum stacks copies of the whole batch
            copies = len(batch) // len(ids)
            return forward(batch, ids.repeat(copies, 1), mask.repeat(copies, 1))

        values = (
            _captum()
            .Occlusion(scores)
            .attribute(
                embeddings,
                sliding_window_shapes=(1, embeddings.shape[-1]),
                strides=(1, embeddings.shape[-1]),
                baselines=0.0,
                target=target,
                perturbations_per_eval=self.options["perturbations_per_eval"],
            )
        )
        return values[..., 0]  # the same drop on every embedding dimension of the token


class _LimeTextExplainer(_TextExplainer):
    """LIME with Captum's ``LimeBase``, the tokens the features: each of ``n_samples``
    perturbed texts keeps every token with probability 1/2 and zeroes the others' embeddings,
    weighted by an exponential kernel of the cosine distance to the whole text (width
    ``kernel_width``, as the LIME package does for text), and a weighted ridge regression gives
    one coefficient per token. Seeded, so every text gets the same perturbations."""

    name = "lime"

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        captum = _captum()
        o = self.options
        forward = _Embedded(self.model)
        embeddings = forward.embed(ids)
        result = torch.zeros(ids.shape, device=ids.device)
        for i in range(len(ids)):
            valid = mask[i].bool()
            count = int(valid.sum())
            row_ids, row_mask = ids[i : i + 1], mask[i : i + 1]

            def perturbations(original: Tensor, valid: Tensor = valid, **kwargs: Any) -> Any:
                generator = torch.Generator().manual_seed(o["seed"])
                while True:
                    on = torch.rand(1, len(valid), generator=generator) < 0.5
                    yield (on | ~valid.cpu()[None]).long()  # padding stays: it is not a feature

            def similarity(
                original: Tensor, perturbed: Tensor, on: Tensor, count: int = count, **kwargs: Any
            ) -> Tensor:
                kept = float(on.float().sum()) - (on.shape[-1] - count)
                distance = 1 - math.sqrt(max(kept, 0.0) / count)
                return torch.tensor(math.exp(-(distance**2) / (2 * o["kernel_width"] ** 2)))

            def perturbed(on: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
                keep = on.to(original.device).bool()[..., None]
                return torch.where(keep, original, torch.zeros_like(original))

            def scores(
                batch: Tensor, row_ids: Tensor = row_ids, row_mask: Tensor = row_mask
            ) -> Tensor:
                return forward(
                    batch, row_ids.expand(len(batch), -1), row_mask.expand(len(batch), -1)
                )

            lime = captum.LimeBase(
                scores,
                interpretable_model=_WeightedRidge(o["alpha"]),
                similarity_func=similarity,
                perturb_func=perturbations,
                perturb_interpretable_space=True,
                from_interp_rep_transform=perturbed,
                to_interp_rep_transform=None,
            )
            coefficients = lime.attribute(
                embeddings[i : i + 1],
                target=int(target[i]),
                n_samples=o["n_samples"],
                perturbations_per_eval=o["batch_size"],
            )
            result[i] = coefficients.to(ids.device).flatten() * valid
        return result


def build_text_explainer(name: str, model: nn.Module, **options: Any) -> TextExplainer:
    """The text explainer ``name`` (one of :data:`TEXT_EXPLAINER_NAMES`) for ``model`` (a
    converted :class:`~bcosify.convert.BcosTextModel`, a :class:`~bcosify.models.text.
    TextClassifier` or a transformers sequence classifier).

    Options: ``integrated_gradients``: ``steps`` (50), ``internal_batch_size`` (64);
    ``occlusion``: ``perturbations_per_eval`` (8); ``lime``: ``n_samples`` (200),
    ``kernel_width`` (0.25), ``alpha`` (1.0), ``seed`` (0), ``batch_size`` (64).

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> explainer = build_text_explainer("occlusion", BertForSequenceClassification(config))
        >>> ids, mask = torch.tensor([[2, 5, 6, 3]]), torch.ones(1, 4, dtype=torch.long)
        >>> explainer.attribute(ids, mask, torch.tensor([1])).shape
        torch.Size([1, 4])
    """
    defaults: dict[str, dict[str, Any]] = {
        "integrated_gradients": {"steps": 50, "internal_batch_size": 64},
        "occlusion": {"perturbations_per_eval": 8},
        "lime": {
            "n_samples": 200,
            "kernel_width": 0.25,
            "alpha": 1.0,
            "seed": 0,
            "batch_size": 64,
        },
    }
    if name not in TEXT_EXPLAINER_NAMES:
        raise EvaluationError(
            f"unknown text explainer {name!r}; choose one of {', '.join(TEXT_EXPLAINER_NAMES)}"
        )
    allowed = defaults.get(name, {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise EvaluationError(
            f"the {name} explainer takes no option {unknown}; it takes {sorted(allowed) or 'none'}"
        )
    settings = {**allowed, **options}
    counts = {k: v for k, v in settings.items() if k not in ("kernel_width", "alpha", "seed")}
    check_positive(**counts)
    if name == "bcos":
        return _BcosTextExplainer(model)
    if name == "occlusion":
        return _OcclusionTextExplainer(model, **settings)
    if name == "lime":
        return _LimeTextExplainer(model, **settings)
    return _GradientExplainer(model, name, **settings)


def _check_tokens(
    input_ids: Tensor, attention_mask: Tensor, target: Tensor | Sequence[int], what: str
) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        raise EvaluationError(f"{what}: input_ids must be an integer tensor (N, L)")
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        raise EvaluationError(f"{what}: attention_mask must have the shape of input_ids")
    targets = torch.as_tensor(target, device=input_ids.device)
    if targets.shape != (len(input_ids),) or targets.is_floating_point():
        raise EvaluationError(
            f"{what}: target must hold one class index per text, shape ({len(input_ids)},); got "
            f"{tuple(targets.shape)}"
        )
    return input_ids, attention_mask, targets.long()


# -- metrics -----------------------------------------------------------------------------------


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
    explainer: TextExplainer, input_ids: Tensor, attention_mask: Tensor, target: Tensor
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
