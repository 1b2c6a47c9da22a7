"""Batch statistics over all processes under DDP, so that N processes train what one would.

A batch norm layer in training mode normalises with the statistics of its batch. Under DDP each
process sees only its share of the global batch, so without synchronisation N processes compute
other statistics (and other running averages) than one process with the whole batch.
:func:`synchronised_batch_norms` makes every ``nn.BatchNorm1d/2d/3d`` and
:class:`~bcosify.nn.BcosBatchNorm2d` of a model compute its training statistics over the global
batch for the duration of a run: per channel, the processes exchange their counts, means and
sums of squared deviations (one ``all_gather``, combined exactly as in Chan et al.'s parallel
variance), and in the backward pass the two (batch norm) or one (uncentred B-cos batch norm)
per-channel gradient sums (one ``all_reduce``). Unlike ``torch.nn.SyncBatchNorm`` it runs on
every backend, gloo on CPUs included.

The layers keep their class outside the run and their state-dict keys throughout: for the
duration their class is swapped for a subclass whose training forward synchronises, and
restored afterwards (also after an error).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ..nn import BcosBatchNorm2d
from .distributed import Distributed

__all__ = ["synchronised_batch_norms"]


class _GlobalBatchNorm(torch.autograd.Function):
    """``y = weight * (x - mean) / sqrt(var + eps) + bias`` (``centred``) or
    ``y = weight * x / sqrt(var + eps) + bias`` (uncentred), with the mean and the biased
    variance of the global batch; channels on dimension 1. Also returns the variance, the mean
    and the global count (not differentiable), for the running statistics."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        centred: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dims = [d for d in range(x.ndim) if d != 1]
        xf = x.float()
        count = xf.numel() // xf.shape[1]
        mean = xf.mean(dims)
        squares = (xf - _channel(mean, x.ndim)).square().sum(dims)
        local = torch.stack([torch.full_like(mean, count), mean, squares]).double()
        gathered = [torch.empty_like(local) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(gathered, local)
        counts, means, sums = torch.stack(gathered).unbind(1)  # (world, C) each
        total = counts.sum(0)
        global_mean = (counts * means).sum(0) / total
        m2 = (sums + counts * (means - global_mean).square()).sum(0)
        mean, var = global_mean.float(), (m2 / total).float()
        inv_std = (var + eps).rsqrt()
        scale = inv_std if weight is None else inv_std * weight.float()
        shifted = xf - _channel(mean, x.ndim) if centred else xf
        y = shifted * _channel(scale, x.ndim)
        if bias is not None:
            y = y + _channel(bias.float(), x.ndim)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.centred = centred
        ctx.total = float(total[0])
        ctx.mark_non_differentiable(var, mean)
        return y.to(x.dtype), var, mean, total[0].float()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, weight, mean, inv_std = ctx.saved_tensors
        dims = [d for d in range(x.ndim) if d != 1]
        n = x.ndim
        xf, dyf = x.float(), dy.float()
        centred_x = xf - _channel(mean, n)
        scale = inv_std if weight is None else inv_std * weight.float()
        # the sums over the local batch: what the weight and bias gradients need (DDP averages
        # those over the processes), and, summed over all processes, what the input's needs
        if ctx.centred:
            local = torch.stack([dyf.sum(dims), (dyf * centred_x).sum(dims)])
        else:
            local = (dyf * xf).sum(dims)[None]
        sums = local.clone()
        torch_dist.all_reduce(sums)
        if ctx.centred:
            dx = dyf - _channel(sums[0] / ctx.total, n)
            dx = dx - centred_x * _channel(inv_std.square() * sums[1] / ctx.total, n)
            dx = dx * _channel(scale, n)
            dweight = local[1] * inv_std
        else:
            correction = scale * inv_std.square() * sums[0] / ctx.total
            dx = dyf * _channel(scale, n) - centred_x * _channel(correction, n)
            dweight = local[0] * inv_std
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        return (
            dx.to(x.dtype) if needs_x else None,
            dweight.to(weight.dtype) if needs_weight and weight is not None else None,
            dyf.sum(dims).to(dy.dtype) if needs_bias else None,
            None,
            None,
        )


def _channel(values: Tensor, ndim: int) -> Tensor:
    return values.view(1, -1, *([1] * (ndim - 2)))


class _Synchronised:
    """The training forward of a batch norm layer with the statistics of the global batch."""

    centred = True

    def forward(self, x: Tensor) -> Tensor:
        module: Any = self
        if not module.training or getattr(module, "explaining", False):
            return super().forward(x)  # type: ignore[misc]
        y, var, mean, total = _GlobalBatchNorm.apply(
            x, module.weight, module.bias, module.eps, self.centred
        )
        if module.running_var is not None:
            self._update_running_statistics(mean, var, total)
        return y

    @torch.no_grad()
    def _update_running_statistics(self, mean: Tensor, var: Tensor, total: Tensor) -> None:
        """What ``nn.BatchNorm2d`` does with the batch's statistics, with the global batch."""
        module: Any = self
        momentum = module.momentum
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(module.num_batches_tracked)
        count = float(total)
        unbiased = var * (count / max(count - 1.0, 1.0))
        module.running_var.lerp_(unbiased.to(module.running_var.dtype), momentum)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.lerp_(mean.to(module.running_mean.dtype), momentum)


class _SynchronisedBcosBatchNorm2d(_Synchronised, BcosBatchNorm2d):
    centred = False


_SYNCHRONISED: dict[type, type] = {
    nn.BatchNorm1d: type("_SynchronisedBatchNorm1d", (_Synchronised, nn.BatchNorm1d), {}),
    nn.BatchNorm2d: type("_SynchronisedBatchNorm2d", (_Synchronised, nn.BatchNorm2d), {}),
    nn.BatchNorm3d: type("_SynchronisedBatchNorm3d", (_Synchronised, nn.BatchNorm3d), {}),
    BcosBatchNorm2d: _SynchronisedBcosBatchNorm2d,
}


@contextlib.contextmanager
def synchronised_batch_norms(model: nn.Module, dist: Distributed) -> Iterator[None]:
    """Under DDP (``dist.world > 1``), train every batch norm layer of ``model`` with the
    statistics of the global batch for the duration; a single process is left as it is.

    A batch-statistics layer of another kind (a subclass with its own forward, such as timm's
    ``BatchNormAct2d``) is left unsynchronised, with a warning naming it.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
        >>> with synchronised_batch_norms(net, Distributed()):  # one process: nothing changes
        ...     type(net[0]).__name__
        'BatchNorm2d'
    """
    if not dist.enabled:
        yield
        return
    swapped: list[tuple[nn.Module, type]] = []
    others = []
    for name, module in model.named_modules():
        kind = type(module)
        if kind in _SYNCHRONISED:
            swapped.append((module, kind))
        elif isinstance(module, (_NormBase, BcosBatchNorm2d)) and not isinstance(
            module, nn.SyncBatchNorm
        ):
            others.append(f"{name} ({kind.__name__})")
    if others and dist.is_main:
        warnings.warn(
            f"batch statistics of {', '.join(others)} are not synchronised across the "
            f"{dist.world} processes, so this run is not what one process would compute",
            stacklevel=3,
        )
    try:
        for module, kind in swapped:
            # the subclass only overrides forward: parameters, buffers and hooks stay as they are
            module.__class__ = _SYNCHRONISED[kind]
        yield
    finally:
        for module, kind in swapped:
            module.__class__ = kind
