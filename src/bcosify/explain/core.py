"""Batched, exact explanations of B-cos models.

In explanation mode a B-cos model computes ``y = W(x) x + sum_k c_k``. For a target output
``y_c`` one forward and one backward pass give the dynamic weights ``W_c(x) = dy_c / dx``; the
contributions ``x * W_c(x)`` plus the constant terms ``c_k * dy_c / dc_k`` sum to ``y_c``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ExplanationError
from ..nn.mode import explanation_mode
from ..nn.trace import ExplanationTrace
from .targets import cosine_similarity_target

__all__ = ["BcosAttribution", "Explanation", "Target", "explain"]

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


def explain(model: nn.Module, inputs: Tensor, target: Target = None) -> Explanation:
    """Explain a batch with the model's own dynamic-linear explanation.

    The model runs in evaluation and explanation mode; afterwards its train/eval flags and
    explanation mode are restored, and no gradient is left on its parameters or on ``inputs``,
    even when an error is raised.

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
    x = inputs.detach().clone().requires_grad_(True)
    with (
        _evaluation(model),
        explanation_mode(model),
        ExplanationTrace(model) as trace,
        torch.enable_grad(),
    ):
        logits = model(x)
        scores, targets = _select(logits, target, batch_size=x.shape[0])
        explained = x if trace.encoded_input is None else trace.encoded_input
        leaves = [explained, *trace.constants.values()]
        grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    weights = _zeros_if_none(grads[0], explained)
    explained = explained.detach()
    contributions = explained * weights
    constants = {
        name: (leaf.detach() * _zeros_if_none(g, leaf)).flatten(1).sum(1)
        for (name, leaf), g in zip(trace.constants.items(), grads[1:], strict=True)
    }
    fold = trace.fold_input
    scores = scores.detach()
    total = contributions.flatten(1).double().sum(1)
    for value in constants.values():
        total = total + value.double()
    return Explanation(
        logits=logits.detach(),
        targets=targets,
        scores=scores,
        inputs=explained,
        weights=weights,
        contributions=contributions,
        contribution_map=contributions.sum(1) if contributions.ndim > 2 else contributions,
        input_contributions=contributions if fold is None else fold(contributions),
        constants=constants,
        residual=(scores.double() - total).to(scores.dtype),
    )


class BcosAttribution:
    """Captum-style attribution with the model's own B-cos explanation.

    ``attribute(inputs, target=...)`` returns contributions shaped like ``inputs`` (for a model
    that encodes its input as ``[x, 1 - x]``, folded back to ``x``), so the method plugs into
    code written for Captum's attribution classes and into Quantus metrics.

    Example:
        >>> import torch
        >>> from bcosify.nn import BcosConv2d, InputEncoding
        >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 1),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> BcosAttribution(model).attribute(torch.rand(3, 3, 5, 5), target=1).shape
        torch.Size([3, 3, 5, 5])
    """

    def __init__(self, forward_func: nn.Module) -> None:
        self.forward_func = forward_func

    def attribute(self, inputs: Tensor, target: Target = None) -> Tensor:
        """Contributions of every input element to the target output, shaped like ``inputs``."""
        return explain(self.forward_func, inputs, target).input_contributions

    def has_convergence_delta(self) -> bool:
        """Captum protocol: this method returns no convergence delta (it is exact)."""
        return False


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
    targets = torch.as_tensor(target, device=device)
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
