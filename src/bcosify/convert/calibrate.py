"""Calibration after conversion: a converted model that is alive in evaluation mode (RECIPE 9).

A converted network keeps the original's batch-norm statistics, but at B = 2 every B-cos layer
scales its output by ``|cos| < 1``, so the signal that reaches each norm is smaller than the one
its statistics describe, and in a deep network the evaluation-mode output shrinks to the logit
bias. :func:`calibrate` changes scales only, from a few batches of images (no labels):

- ``"norms"``: re-estimate the running statistics of every B-cos batch norm on the converted
  network itself (the cumulative average over the batches, as "precise BN" does), so that each
  norm sees the statistics of the signal it gets;
- ``"lsuv"``: like LSUV initialisation, rescale every B-cos convolution and linear layer in the
  order the forward calls them so that its output has unit RMS on the images (a layer's output
  scales with the ``B``-th power of its weight's scale), for networks without batch norms;
- ``"auto"``: ``"norms"`` when the network has B-cos batch norms, else ``"lsuv"``;
- ``"original"`` (with ``original=``, the model it was converted from): per channel, the
  least-squares prediction ``x_t ~ a x_s + c`` of what the original's norm at the same path
  receives (``x_t``) from what the B-cos batch norm receives (``x_s``) on the same images; the
  norm's statistics become the original's moved by it, so that its output is the original
  norm's output on the prediction (``sigma' = sigma / a``, and with a kept bias
  ``mu' = (mu - c) / a``). Unlike ``"norms"``
  it keeps what the original's statistics know (measured on ImageNet): re-estimating them on a
  few photos changes the function of a real network (exact conversion, B = 1 with biases, from
  100% to 18% top-1 agreement on Lite0 with 32 photos), fitting them to the original does not;
- ``"layers"`` (with ``original=``): the weights of every B-cos convolution and linear layer,
  in the order the forward calls them, solved in closed form so that the layer reproduces the
  original's layer at the same path on what the converted network passes it (the sequential
  layer-wise reconstruction of post-training quantization: each layer also makes up for the
  errors of the layers before it). A B-cos unit's output ``y = z |z| ^ (B-1) / ||x|| ^ (B-1)``
  is monotone in its linear output ``z = w . x``, so the original's output ``t`` gives the
  linear output the unit needs, ``z* = sign(t) (|t| ||x|| ^ (B-1)) ^ (1/B)``, and ``w`` is the
  ridge least-squares solution of ``w . x = z*`` over every position of the images, pulled
  towards the original's weight (:mod:`bcosify.convert.reconstruct`). It changes weights, not
  only scales; on Lite0 with biases, from 64 crops, it keeps 68% top-1 agreement at B = 1.1
  and 47% at B = 1.25, where ``"original"`` keeps 60% and 34% (``benchmarks/bench_real.py``);
- ``"blocks"`` (with ``original=``): ``"layers"``, then every block of the network (its stages,
  or their children) trained, in forward order, by ``block_steps`` Adam steps to reproduce the
  original's block at the same path on what the converted network passes it (BRECQ's
  block-wise reconstruction, :mod:`bcosify.convert.blockwise`). The layer fit solves each
  layer alone; a block's errors also pass through its norms, activations and residual sum.

Weights and statistics are constants of the explanation, so explanations stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..device import device_of
from ..errors import UsageError
from ..nn import BcosBatchNorm2d, BcosConv2d, BcosLinear
from .blockwise import fit_blocks
from .reconstruct import fit_layers, run_side_by_side

__all__ = ["CalibrationResult", "calibrate"]

Method = Literal["auto", "norms", "lsuv", "original", "layers", "blocks"]
Images = Tensor | Dataset | Iterable[Tensor] | Iterable[tuple[Tensor, ...]]


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` did.

    Attributes:
        method: ``"norms"``, ``"lsuv"``, ``"original"``, ``"layers"`` or ``"blocks"``.
        layers: how many norms (``"norms"``, ``"original"``) or layers (``"lsuv"``,
            ``"layers"``, ``"blocks"``) it recalibrated.
        images: how many images it used.
        skipped: the paths of the B-cos layers ``"layers"`` and ``"blocks"`` left as they were,
            and of the blocks ``"blocks"`` did not train, each with why.
        blocks: how many blocks ``"blocks"`` trained.
    """

    method: str
    layers: int
    images: int
    skipped: tuple[str, ...] = ()
    blocks: int = 0

    def __str__(self) -> str:
        what = {
            "norms": "batch norms re-estimated",
            "original": "batch norms fitted to the original",
            "layers": "layers fitted to the original",
            "blocks": "layers fitted to the original",
        }.get(self.method, "layers rescaled")
        text = f"calibrated ({self.method}): {self.layers} {what} on {self.images} images"
        if self.method == "blocks":
            text += f", then {self.blocks} blocks trained to reproduce the original's"
        return text + "".join(f"\n  left as converted: {why}" for why in self.skipped)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    images: Images,
    *,
    method: Method = "auto",
    batch_size: int = 64,
    original: nn.Module | None = None,
    ridge: float = 1e-2,
    block_steps: int = 100,
    block_lr: float = 1e-4,
) -> CalibrationResult:
    """Rescale a converted model from images (no labels) so that it is alive in eval mode.

    Args:
        model: a converted model (B-cos layers and norms), changed in place; it is left in
            evaluation mode.
        images: images in ``[0, 1]``: a tensor ``(N, 3, H, W)``, a dataset or an iterable of
            batches (items or batches may be ``(image, label, ...)`` tuples; labels are unused).
        method: ``"norms"``, ``"lsuv"``, ``"original"``, ``"layers"``, ``"blocks"`` or
            ``"auto"`` (see the module docstring).
        batch_size: for a tensor or a dataset. ``"original"`` and ``"layers"`` fit on the sums
            over this and the earlier batches, refined batch by batch; for ``"layers"`` a batch
            should hold more positions than the widest layer has inputs.
        original: for ``"original"``, ``"layers"`` and ``"blocks"``: the model ``model`` was
            converted from, taking normalised images (its input normalisation is ``model``'s
            conversion options').
        ridge: for ``"layers"`` and ``"blocks"``: the pull towards the original's weights,
            relative to the mean squared input of each layer.
        block_steps: for ``"blocks"``: Adam steps per block, of 16 images each drawn from
            three quarters of ``images``; the other quarter decides whether a block is kept.
        block_lr: for ``"blocks"``: their learning rate.

    Raises:
        UsageError: for no images, ``"norms"`` or ``"original"`` on a network without B-cos
            batch norms, ``"original"``, ``"layers"`` or ``"blocks"`` without ``original``,
            ``"layers"`` or ``"blocks"`` when no B-cos layer has a counterpart in ``original``,
            a negative ``block_steps`` or a ``block_lr`` that is not positive.

    Example:
        >>> import torch, bcosify
        >>> model, _ = bcosify.convert(bcosify.models.create("torchvision:resnet18", num_classes=4))
        >>> result = calibrate(model, torch.rand(8, 3, 32, 32))
        >>> result.method, result.layers
        ('norms', 20)
        >>> original = bcosify.models.create("torchvision:resnet18", num_classes=4).eval()
        >>> exact, _ = bcosify.convert(original, b=1.0, keep_bias=True)
        >>> calibrate(exact, torch.rand(8, 3, 32, 32), method="original", original=original).layers
        20
        >>> calibrate(exact, torch.rand(8, 3, 32, 32), method="layers", original=original).layers
        21
    """
    norms = [m for m in model.modules() if isinstance(m, BcosBatchNorm2d)]
    norms = [m for m in norms if m.running_var is not None]
    if method == "auto":
        method = "norms" if norms else "lsuv"
    if method not in ("norms", "lsuv", "original", "layers", "blocks"):
        raise UsageError(
            "method must be 'auto', 'norms', 'lsuv', 'original', 'layers' or 'blocks', got "
            f"{method!r}"
        )
    if method in ("original", "layers", "blocks") and original is None:
        raise UsageError(f"method={method!r} fits the model to the original: pass original=")
    if not ridge > 0:
        raise UsageError(f"ridge must be positive, got {ridge!r}")
    if block_steps < 0 or not block_lr > 0:
        raise UsageError(
            f"block_steps must be >= 0 and block_lr positive, got {block_steps!r} and {block_lr!r}"
        )
    if method in ("norms", "original") and not norms:
        raise UsageError(
            "method='norms' re-estimates batch-norm statistics, and this model has no B-cos "
            "batch norm with running statistics; use method='lsuv'"
        )
    model.eval()
    device = device_of(model)
    batches = [batch.to(device) for batch in _batches(images, batch_size)]
    count = sum(len(batch) for batch in batches)
    if not count:
        raise UsageError("calibration needs at least one image")
    if method == "norms":
        _reestimate(norms, model, batches)
        return CalibrationResult("norms", len(norms), count)
    if method == "original":
        assert original is not None
        return CalibrationResult("original", _fit_to_original(model, original, batches), count)
    if method in ("layers", "blocks"):
        assert original is not None
        fitted, skipped = fit_layers(model, original, batches, ridge)
        if method == "layers":
            return CalibrationResult("layers", fitted, count, skipped)
        trained, left = fit_blocks(
            model, original, batches, steps=block_steps, lr=block_lr, ridge=ridge
        )
        return CalibrationResult("blocks", fitted, count, skipped + left, trained)
    return CalibrationResult("lsuv", _rescale_layers(model, batches), count)


def _batches(images: Images, batch_size: int) -> Iterator[Tensor]:
    if isinstance(images, Tensor):
        yield from images.split(batch_size)
        return
    if isinstance(images, Dataset):
        images = DataLoader(images, batch_size=batch_size)
    for batch in images:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _reestimate(norms: list[BcosBatchNorm2d], model: nn.Module, batches: list[Tensor]) -> None:
    """Running statistics as the cumulative average over the batches (others in eval mode)."""
    momenta = [norm.momentum for norm in norms]
    try:
        for norm in norms:
            norm.running_var.fill_(1.0)
            norm.num_batches_tracked.zero_()
            norm.momentum = None
            norm.train()
        for batch in batches:
            model(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
            norm.eval()


def _fit_to_original(model: nn.Module, original: nn.Module, batches: list[Tensor]) -> int:
    """Fit every B-cos batch norm's statistics to the original's norm at the same path.

    One forward pass per batch, in which each norm, as it is called, is refitted (before it
    runs) on the sums of this and the earlier batches, so that the norms after it are fitted
    on what it passes on: per channel, the sums of ``x_t``, ``x_s``, ``x_t^2``, ``x_s x_t``
    give the least-squares ``a`` and ``c``.
    """
    network = getattr(model, "network", model)
    pairs = []
    for path, norm in network.named_modules():
        if not isinstance(norm, BcosBatchNorm2d) or norm.running_var is None:
            continue
        try:
            source = original.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(source, nn.BatchNorm2d) and source.running_mean is not None:
            pairs.append((norm, source))
    if not pairs:
        raise UsageError(
            "method='original' needs batch norms at the same paths in the model and the "
            "original (the converted network keeps the original's module paths)"
        )
    sums = [torch.zeros(6, norm.running_var.numel(), dtype=torch.float64) for norm, _ in pairs]
    received: dict[int, Tensor] = {}

    def keep(index: int) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            received[index] = args[0]

        return hook

    def fit(index: int) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            xs = args[0].double().transpose(0, 1).flatten(1)
            xt = received[index].double().transpose(0, 1).flatten(1)
            moments = [xt.sum(1), xs.sum(1), (xt * xt).sum(1), (xs * xt).sum(1)]
            count = torch.full_like(xt[:, 0], xt.shape[1])
            sums[index] += torch.stack([*moments, count, (xs * xs).sum(1)])
            _set_fitted_statistics(pairs[index][0], pairs[index][1], sums[index])

        return hook

    handles = [source.register_forward_pre_hook(keep(i)) for i, (_, source) in enumerate(pairs)]
    handles += [norm.register_forward_pre_hook(fit(i)) for i, (norm, _) in enumerate(pairs)]
    try:
        run_side_by_side(model, original, batches, received.clear)
    finally:
        for handle in handles:
            handle.remove()
    return len(pairs)


def _set_fitted_statistics(norm: BcosBatchNorm2d, source: nn.BatchNorm2d, sums: Tensor) -> None:
    """The original's statistics moved by the per-channel least-squares prediction of the
    original's input from the converted one, ``x_t ~ a x_s + c``: the norm then outputs the
    original norm's output on that prediction. Where the two inputs are weakly correlated the
    prediction, and so the output, shrinks (the least-squares answer), instead of blowing up."""
    st, ss, _, sst, n = sums[:5]
    mean_t, mean_s = st / n, ss / n
    var_s = sums[5] / n - mean_s**2
    a = (sst / n - mean_s * mean_t) / var_s.clamp_min(1e-30)
    # a channel the converted network leaves (nearly) constant: nothing to predict from
    usable = (var_s > 1e-6 * var_s.max().clamp_min(1e-30)) & (a.abs() > 1e-6)
    a = torch.where(usable, a, torch.ones_like(a))
    c = torch.where(usable, mean_t - a * mean_s, torch.zeros_like(a))
    sigma = (source.running_var.double() + source.eps).sqrt()
    dtype = norm.running_var.dtype
    # gamma (a x_s + c - mu) / sigma + beta = gamma' x_s / sigma' + beta'
    norm.running_var.copy_(((sigma / a.abs()) ** 2 - norm.eps).clamp_min(0).to(dtype))
    gamma = source.weight.double() if source.weight is not None else torch.ones_like(sigma)
    if norm.weight is not None:  # a negative a flips the channel: so does the scale
        norm.weight.copy_((gamma * a.sign()).to(dtype))
    if norm.bias is not None:
        beta = source.bias.double() if source.bias is not None else torch.zeros_like(sigma)
        norm.bias.copy_((beta - gamma * (source.running_mean.double() - c) / sigma).to(dtype))


def _rescale_layers(model: nn.Module, batches: list[Tensor]) -> int:
    """Unit output RMS for every B-cos layer, in the order the forward calls them.

    Each batch is one forward pass in which every layer, as it is called, is rescaled to unit
    output RMS on that batch and hands the rescaled output on, so the layers after it are
    measured on what they will see; the next batches refine the scales.
    """
    layers = [m for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]

    def rescale(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        rms = float(output.detach().double().pow(2).mean().sqrt())
        if rms <= 0 or rms != rms:  # a dead or non-finite output: nothing to scale by
            return output
        module.weight.mul_(rms ** (-1.0 / module.b))
        return output / rms

    handles = [layer.register_forward_hook(rescale) for layer in layers]
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return len(layers)
