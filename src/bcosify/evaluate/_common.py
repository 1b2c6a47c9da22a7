"""What the explainers and the metrics share: model kind, class probabilities, batch checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import EvaluationError
from ..nn import BcosConv2d, BcosLinear

__all__ = [
    "Probability",
    "check_batch",
    "check_positive",
    "has_bcos_layers",
    "probabilities",
    "resolve_probability",
]

Probability = Literal["softmax", "sigmoid", "auto"]
"""How logits become class probabilities; ``"auto"``: sigmoid for B-cos models (trained with
binary cross-entropy), softmax for ordinary ones."""


def has_bcos_layers(model: nn.Module) -> bool:
    """True if ``model`` contains B-cos units (``BcosConv2d`` or ``BcosLinear``).

    Example:
        >>> from bcosify.nn import BcosLinear
        >>> has_bcos_layers(torch.nn.Linear(2, 2)), has_bcos_layers(BcosLinear(2, 2))
        (False, True)
    """
    return any(isinstance(m, (BcosConv2d, BcosLinear)) for m in model.modules())


def resolve_probability(model: nn.Module, kind: str) -> Literal["softmax", "sigmoid"]:
    """``"softmax"`` or ``"sigmoid"``: ``kind`` itself, or for ``"auto"`` the one fitting ``model``.

    Example:
        >>> resolve_probability(torch.nn.Linear(2, 2), "auto")
        'softmax'
    """
    if kind == "auto":
        return "sigmoid" if has_bcos_layers(model) else "softmax"
    if kind not in ("softmax", "sigmoid"):
        raise EvaluationError(
            f"unknown probability {kind!r}: choose 'softmax', 'sigmoid' or 'auto' (sigmoid for "
            "B-cos models, softmax for ordinary ones)"
        )
    return kind  # type: ignore[return-value]


def probabilities(logits: Tensor, kind: Literal["softmax", "sigmoid"]) -> Tensor:
    """Class probabilities ``(N, C)`` from logits ``(N, C)``.

    Example:
        >>> probabilities(torch.zeros(1, 4), "softmax").tolist()
        [[0.25, 0.25, 0.25, 0.25]]
    """
    logits = logits.float()
    return logits.softmax(1) if kind == "softmax" else logits.sigmoid()


def check_batch(inputs: Tensor, target: Tensor | Sequence[int], what: str) -> tuple[Tensor, Tensor]:
    """A detached float copy of an image batch ``(N, C, H, W)`` and its targets as ``(N,)`` long.

    Example:
        >>> x, t = check_batch(torch.zeros(2, 3, 4, 4), [1, 0], "saliency")
        >>> x.shape, t.dtype
        (torch.Size([2, 3, 4, 4]), torch.int64)
    """
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        got = (
            f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}"
            if isinstance(inputs, Tensor)
            else type(inputs).__name__
        )
        raise EvaluationError(
            f"{what}: inputs must be a float image batch of shape (N, C, H, W) with values in "
            f"[0, 1]; got {got}"
        )
    targets = torch.as_tensor(target, device=inputs.device)
    integer = not targets.is_floating_point() and targets.dtype != torch.bool
    if targets.ndim != 1 or targets.shape[0] != inputs.shape[0] or not integer:
        raise EvaluationError(
            f"{what}: target must hold one integer class index per image, shape "
            f"({inputs.shape[0]},); got dtype {targets.dtype} and shape {tuple(targets.shape)}"
        )
    return inputs.detach().to(torch.float32, copy=True), targets.long()


def check_positive(**values: int) -> None:
    """Refuse any value that is not a positive integer, naming it.

    Example:
        >>> check_positive(steps=0)
        Traceback (most recent call last):
        ...
        bcosify.errors.EvaluationError: steps must be a positive integer, got 0
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
