"""Batched, exact explanations of B-cos models.

In explanation mode a B-cos model computes ``y = W(x) x + sum_k c_k``. For a target output
``y_c`` one forward and one backward pass give the dynamic weights ``W_c(x) = dy_c / dx``; the
contributions ``x * W_c(x)`` plus the constant terms ``c_k * dy_c / dc_k`` sum to ``y_c``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import ConstantOutputWarning, ExplanationError, InexactExplanationWarning
from ..liveness import ADVICE
from ..nn.logit_bias import LogitBias
from ..nn.mode import explanation_mode
from ..nn.trace import ExplanationTrace
from .targets import cosine_similarity_target

__all__ = [
    "DEFAULT_TOLERANCE",
    "LIVE_SHARE",
    "ExplainedPass",
    "Explanation",
    "Target",
    "check_pass",
    "explain",
    "explained_pass",
]

DEFAULT_TOLERANCE = 1e-4
"""The largest residual :func:`explain` accepts quietly, relative to ``max(1, |score|)``: a
converted model in float32 stays below 1e-6 (the tests check 1e-4)."""

Target = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None
"""What to explain: None (the predicted class), one class for every example, one class per
example, a floating-point embedding (the cosine similarity of the output with it, see
:func:`~bcosify.explain.targets.cosine_similarity_target`), or a callable mapping the model output
to one score per example."""


@dataclass(frozen=True)
class Explanation:
    """The explanation of one batch. All tensors are detached, batch first.

    Attributes:
        logits: the model output, ``(N, ...)``.
        targets: the explained class per example, ``(N,)``; None for a callable target.
        scores: the explained value per example (the target logit), ``(N,)``.
        inputs: the tensor explained: the encoded ``[x, 1 - x]`` input when the model encodes
            its input itself, otherwise the input as given.
        weights: the dynamic weights ``W(x)``, shaped like ``inputs``.
        contributions: ``inputs * weights``.
        contribution_map: contributions summed over the channel dimension, ``(N, H, W)``.
        input_contributions: contributions folded back to the shape of the input the caller
            passed (for a self-encoding model, ``[x, 1 - x]`` folded to ``x``).
        constants: the contribution of every named constant inside the model, ``(N,)`` each.
        residual: ``scores - sum(contributions) - sum(constants)``, ``(N,)``; zero up to
            floating-point error for a dynamic-linear model.
    """

    logits: Tensor
    targets: Tensor | None
    scores: Tensor
    inputs: Tensor
    weights: Tensor
    contributions: Tensor
    contribution_map: Tensor
    input_contributions: Tensor
    constants: dict[str, Tensor]
    residual: Tensor

    def __len__(self) -> int:
        return self.scores.shape[0]


def explain(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    check: Literal["warn", "raise", "off"] = "warn",
) -> Explanation:
    """Explain a batch with the model's own dynamic-linear explanation.

    The model runs in evaluation and explanation mode; afterwards its train/eval flags and
    explanation mode are restored, and no gradient is left on its parameters or on ``inputs``,
    even when an error is raised.

    An explanation is exact when the contributions and constants sum to the score. When the
    residual of an example exceeds ``tolerance * max(1, |score|)`` (or is not finite), a
    :class:`~bcosify.errors.InexactExplanationWarning` says so and why (non-finite inputs,
    autocast or low-precision weights, or a model that is not dynamic linear, such as one that
    is not a B-cos model); ``check="raise"`` raises an :class:`ExplanationError` instead, and
    ``check="off"`` skips the check.

    Args:
        model: a B-cos model (every module dynamic linear in explanation mode).
        inputs: a batch, ``(N, C, H, W)`` for images.
        target: None for the predicted class; an int for the same class for every example; a
            list or 1-D integer tensor with one class per example; a floating-point embedding
            ``(D,)`` or ``(N, D)``, such as a CLIP text embedding, to explain the cosine
            similarity of the output embedding with it (the output's norm detached, so the
            explanation is exact); or a callable mapping the model output to one score per
            example, shape ``(N,)``.

    Example:
        >>> import torch
        >>> from bcosify.nn import BcosConv2d, InputEncoding, LogitBias
        >>> model = torch.nn.Sequential(
        ...     InputEncoding(), BcosConv2d(6, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...     torch.nn.Flatten(), LogitBias.for_classes(4))
        >>> e = explain(model, torch.rand(2, 3, 8, 8), target=[0, 3])
        >>> e.weights.shape, bool(e.residual.abs().max() < 1e-4)
        (torch.Size([2, 6, 8, 8]), True)
    """
    if check not in ("warn", "raise", "off"):
        raise ExplanationError(f"check must be 'warn', 'raise' or 'off', got {check!r}")
    if not isinstance(model, nn.Module):
        raise ExplanationError(f"explain expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.ndim < 2:
        raise ExplanationError(
            "inputs must be a floating-point tensor with a batch dimension first, got "
            + (
                f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}"
                if isinstance(inputs, Tensor)
                else type(inputs).__name__
            )
        )
    if inputs.shape[0] == 0:
        raise ExplanationError(
            f"the batch is empty (inputs of shape {tuple(inputs.shape)}): pass at least one example"
        )
    _check_dtype(model, inputs)
    if isinstance(target, Tensor) and target.is_floating_point() and _is_classifier(model):
        raise ExplanationError(
            f"a floating-point target (dtype {target.dtype}, shape {tuple(target.shape)}) is an "
            "embedding to compare outputs with (a CLIP text embedding), but this model "
            "classifies: pass class indices as integers (a list, or a torch.long tensor)"
        )
    x = inputs.detach().clone().requires_grad_(True)
    run = explained_pass(model, lambda: model(x), x, target, x.shape[0])
    if check != "off":
        check_pass(model, inputs, run, tolerance, check)
    contributions = run.contributions
    return Explanation(
        logits=run.logits,
        targets=run.targets,
        scores=run.scores,
        inputs=run.inputs,
        weights=run.weights,
        contributions=contributions,
        contribution_map=contributions.sum(1) if contributions.ndim > 2 else contributions,
        input_contributions=contributions if run.fold is None else run.fold(contributions),
        constants=run.constants,
        residual=run.residual,
    )


def _check_dtype(model: nn.Module, inputs: Tensor) -> None:
    """The inputs have the floating-point type of the model's weights (a mismatch would fail
    deep inside the first layer)."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype != inputs.dtype and not torch.is_autocast_enabled():
        raise ExplanationError(
            f"the inputs are {inputs.dtype} but the model's weights are {weight.dtype}: pass "
            f"inputs.to({weight.dtype}) (or convert the model with model.to({inputs.dtype}))"
        )


def _is_classifier(model: nn.Module) -> bool:
    """Whether the model's outputs are class logits: it adds a logit bias (a converted
    classifier), as a CLIP image tower, whose outputs are embeddings, does not."""
    return isinstance(getattr(model, "logit_bias", None), LogitBias)


@dataclass(frozen=True)
class ExplainedPass:
    """What one forward and one backward pass in explanation mode give (detached tensors).

    Attributes:
        logits, targets, scores: the output, the explained classes (None for a callable
            target) and the explained score per example.
        inputs: the tensor explained (the leaf a model's encoding marked with
            :func:`~bcosify.nn.traced_input`, else the input itself).
        weights: ``d score / d inputs``; ``contributions``: ``inputs * weights``.
        constants: the contribution of every named constant, ``(N,)`` each.
        fold: maps contributions back to the shape of the model's own input, or None.
        residual: ``scores - sum(contributions) - sum(constants)``.
    """

    logits: Tensor
    targets: Tensor | None
    scores: Tensor
    inputs: Tensor
    weights: Tensor
    contributions: Tensor
    constants: dict[str, Tensor]
    fold: Callable[[Tensor], Tensor] | None
    residual: Tensor


def explained_pass(
    model: nn.Module,
    forward: Callable[[], Tensor],
    fallback: Tensor | None,
    target: Target,
    batch_size: int,
) -> ExplainedPass:
    """Run ``forward()`` (the model on a batch) in evaluation and explanation mode under an
    :class:`~bcosify.nn.ExplanationTrace`, and differentiate the target scores with respect to
    the traced input (``fallback`` when the model marks none) and every traced constant.

    Raises:
        ExplanationError: when the model marked no input and there is no ``fallback``.
    """
    with (
        _evaluation(model),
        explanation_mode(model),
        ExplanationTrace(model) as trace,
        torch.enable_grad(),
    ):
        logits = forward()
        explained = fallback if trace.encoded_input is None else trace.encoded_input
        if explained is None:
            raise ExplanationError(
                f"{type(model).__name__} marked no explained input (a text model's token "
                "embedding does, once converted): convert the model with bcosify.convert"
            )
        scores, targets = _select(logits, target, batch_size=batch_size)
        leaves = [explained, *trace.constants.values()]
        grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    weights = _zeros_if_none(grads[0], explained)
    explained = explained.detach()
    contributions = explained * weights
    constants = {
        name: (leaf.detach() * _zeros_if_none(g, leaf)).flatten(1).sum(1)
        for (name, leaf), g in zip(trace.constants.items(), grads[1:], strict=True)
        if g is not None or name not in trace.optional
    }
    for name, value in constants.items():
        if value.shape != scores.shape:
            raise ExplanationError(
                f"the constant {name!r} is combined with a tensor whose first dimension "
                f"({value.shape[0]}) is not the batch ({scores.shape[0]}): the model reshapes "
                "its batch (as TNT's pixel tokens do), so that constant's contribution cannot "
                "be given per example"
            )
    scores = scores.detach()
    total = contributions.flatten(1).double().sum(1)
    for value in constants.values():
        total = total + value.double()
    residual = (scores.double() - total).to(scores.dtype)
    return ExplainedPass(
        logits.detach(),
        targets,
        scores,
        explained,
        weights,
        contributions,
        constants,
        trace.fold_input,
        residual,
    )


def check_pass(
    model: nn.Module, inputs: Tensor, run: ExplainedPass, tolerance: float, check: str
) -> None:
    """What :func:`explain` checks of every explanation: that it is exact
    (:class:`~bcosify.errors.InexactExplanationWarning`, or an :class:`ExplanationError` with
    ``check="raise"``), and that the input carries the score rather than the model's constants
    alone (:class:`~bcosify.errors.ConstantOutputWarning`)."""
    _check_residual(model, inputs, run.scores, run.residual, tolerance, check)
    carried = run.contributions.flatten(1).double().sum(1).abs()
    scale = run.scores.double().abs().clamp_min(1.0)
    if len(carried) and bool((carried <= LIVE_SHARE * scale).all()):
        warnings.warn(
            f"the explained scores are the model's constants alone: the input's contributions "
            f"carry at most {float((carried / scale).max()):.1e} of each score, so every map "
            f"is noise around zero; {ADVICE}",
            ConstantOutputWarning,
            stacklevel=3,
        )


LIVE_SHARE = 1e-3
"""The smallest share of an explained score (relative to ``max(1, |score|)``) that the input's
contributions must carry in at least one example of a batch, for :func:`explain` not to warn
that the model outputs its constants alone."""


def _check_residual(
    model: nn.Module,
    inputs: Tensor,
    scores: Tensor,
    residual: Tensor,
    tolerance: float,
    check: str,
) -> None:
    """Warn (or raise) when an example's residual exceeds the tolerance, saying why."""
    relative = residual.double().abs() / scores.double().abs().clamp_min(1.0)
    inexact = ~(relative <= tolerance)  # NaN counts as inexact
    if not bool(inexact.any()):
        return
    worst = relative[inexact].nan_to_num(nan=float("inf")).max()
    message = (
        f"the explanations of {int(inexact.sum())} of {len(residual)} examples are inexact "
        f"(|score - contributions - constants| / max(1, |score|) is {float(worst):.2g}, above "
        f"the tolerance {tolerance:g}): {_why_inexact(model, inputs, scores)}"
    )
    if check == "raise":
        raise ExplanationError(message)
    warnings.warn(message, InexactExplanationWarning, stacklevel=3)


def _why_inexact(model: nn.Module, inputs: Tensor, scores: Tensor) -> str:
    """The likeliest reason for a residual, as advice."""
    bad = int((~torch.isfinite(inputs)).sum())
    if bad:
        return f"the inputs hold {bad} NaN or infinite values; explain finite inputs"
    if torch.is_autocast_enabled(inputs.device.type):
        dtype = torch.get_autocast_dtype(inputs.device.type)
        return (
            f"autocast ({dtype}) is on, so the model ran in reduced precision; explain "
            "outside autocast for exact explanations"
        )
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in _LOW_PRECISION})
    if low or inputs.dtype in _LOW_PRECISION:
        return (
            f"the model or the inputs are in reduced precision ({', '.join(low) or inputs.dtype}); "
            "explain in float32 (model.float()) for exact explanations"
        )
    if not bool(torch.isfinite(scores).all()):
        return "the model's output is not finite"
    return (
        "the model is not dynamic linear in explanation mode: it is not a B-cos model, or one "
        "of its modules adds an input-dependent term that explanation mode does not detach "
        "(convert the model with bcosify.convert; custom modules need bcosify.nn.ExplanationAware)"
    )


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _select(logits: Tensor, target: Target, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """The explained score per example, and the class indices when target is not a callable."""
    if isinstance(target, Tensor) and target.is_floating_point():
        target = cosine_similarity_target(target)
    if callable(target) and not isinstance(target, Tensor):
        scores = target(logits)
        if not isinstance(scores, Tensor) or scores.shape != (batch_size,):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ExplanationError(
                f"a callable target must return one score per example, shape ({batch_size},); "
                f"got {shape}"
            )
        return scores, None
    if logits.ndim != 2:
        raise ExplanationError(
            f"class targets need a model output of shape (N, num_classes), got "
            f"{tuple(logits.shape)}; pass a callable target that reduces the output to (N,)"
        )
    num_classes = logits.shape[1]
    targets = _targets(logits, target, batch_size)
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ExplanationError(
            f"targets must be class indices in [0, {num_classes}), got {targets.tolist()}"
        )
    return logits.gather(1, targets[:, None]).squeeze(1), targets


def _targets(logits: Tensor, target: Target, batch_size: int) -> Tensor:
    device = logits.device
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, (bool, float)):
        raise ExplanationError(f"a target must be a class index, got {target!r}")
    if isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long, device=device)
    try:
        targets = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise ExplanationError(
            f"a target must be None, a class index, one class index per example or a "
            f"callable, got {type(target).__name__} {target!r:.60}"
        ) from None
    if targets.ndim == 0:
        targets = targets.expand(batch_size)
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.ndim != 1:
        raise ExplanationError(
            f"targets must be integer class indices, one per example; got a tensor of dtype "
            f"{targets.dtype} and shape {tuple(targets.shape)}"
        )
    if targets.shape[0] != batch_size:
        raise ExplanationError(
            f"got {targets.shape[0]} targets for a batch of {batch_size}: pass one target per "
            "example, a single int for all, or None for the predicted classes"
        )
    return targets.long()


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.detach()


@contextlib.contextmanager
def _evaluation(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration; restores every module's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training
