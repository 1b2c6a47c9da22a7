"""Optimisers, the learning-rate schedule, adaptive gradient clipping, EMA and the B schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..nn import BcosConv2d, BcosLinear
from .recipes import Recipe

__all__ = [
    "ExponentialMovingAverage",
    "adaptive_clip_grad_",
    "b_at",
    "build_optimizer",
    "learning_rate_at",
    "set_b_",
]


def build_optimizer(recipe: Recipe, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``parameters`` (those that require grad).

    Example:
        >>> from bcosify.train import get_recipe
        >>> build_optimizer(get_recipe("bcosify-cnn"), torch.nn.Linear(2, 2).parameters())
        ... # doctest: +ELLIPSIS
        AdamW (...
    """
    params = [p for p in parameters if p.requires_grad]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)


def learning_rate_at(
    recipe: Recipe, step: int, total_steps: int, fraction: float | None = None
) -> float:
    """Linear warm-up for ``warmup_steps``, then cosine decay to 0 (or constant), per step.

    ``fraction`` (a run with a time budget: the fraction of it spent) replaces the fraction of
    the steps after the warm-up in the cosine.

    Example:
        >>> from bcosify.train import get_recipe
        >>> r = get_recipe("standard", lr=1.0, warmup_steps=10)
        >>> learning_rate_at(r, 4, 110), learning_rate_at(r, 60, 110), learning_rate_at(r, 110, 110)
        (0.5, 0.5, 0.0)
        >>> learning_rate_at(r, 60, 110, fraction=0.5)
        0.5
    """
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.schedule == "constant":
        return recipe.lr
    decay_steps = max(1, total_steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / decay_steps)
    if fraction is not None:
        progress = fraction
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def b_at(recipe: Recipe, step: int) -> float:
    """B at ``step``: fixed, or ramped linearly from 1 over ``b_ramp_steps``.

    Example:
        >>> from bcosify.train import get_recipe
        >>> b_at(get_recipe("bcosify-cnn", b_ramp_steps=100), 50)
        1.5
    """
    if recipe.b_ramp_steps <= 0:
        return recipe.b
    return 1.0 + (recipe.b - 1.0) * min(1.0, step / recipe.b_ramp_steps)


def set_b_(model: nn.Module, b: float) -> None:
    """Set B of every B-cos layer of ``model``."""
    for layer in model.modules():
        if isinstance(layer, (BcosConv2d, BcosLinear)):
            layer.b = float(b)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[nn.Parameter], clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al., 2021), unit-wise, in place.

    Each unit's gradient (a row of a weight, or a whole 1-D parameter) is scaled down to at
    most ``clip * max(||w_unit||, eps)``.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2, 2)); p.grad = torch.full((2, 2), 10.0)
        >>> adaptive_clip_grad_([p], 0.01); p.grad
        tensor([[0.0100, 0.0100],
                [0.0100, 0.0100]])
    """
    for p in parameters:
        if p.grad is None:
            continue
        weight_norm = _unit_norm(p.detach()).clamp_min(eps)
        grad_norm = _unit_norm(p.grad)
        limit = weight_norm * clip
        scale = torch.where(grad_norm > limit, limit / grad_norm.clamp_min(1e-6), 1.0)
        p.grad.mul_(scale)


def _unit_norm(x: Tensor) -> Tensor:
    if x.ndim <= 1:
        return x.norm()
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


class ExponentialMovingAverage:
    """An exponential moving average of a model's parameters and buffers.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> ema = ExponentialMovingAverage(net, decay=0.5)
        >>> with torch.no_grad(): _ = net.weight.add_(2.0)
        >>> ema.update(net)
        >>> bool(torch.allclose(ema.state["weight"], net.weight.detach() - 1.0))
        True
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.lerp_(value.detach(), 1.0 - self.decay)
            else:
                average.copy_(value)
