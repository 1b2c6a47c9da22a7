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
- ``"auto"``: ``"norms"`` when the network has B-cos batch norms, else ``"lsuv"``.

Weights and statistics are constants of the explanation, so explanations stay exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..device import device_of
from ..errors import UsageError
from ..nn import BcosBatchNorm2d, BcosConv2d, BcosLinear

__all__ = ["CalibrationResult", "calibrate"]

Method = Literal["auto", "norms", "lsuv"]
Images = Tensor | Dataset | Iterable[Tensor] | Iterable[tuple[Tensor, ...]]


@dataclass(frozen=True)
class CalibrationResult:
    """What :func:`calibrate` did.

    Attributes:
        method: ``"norms"`` or ``"lsuv"``.
        layers: how many norms (``"norms"``) or layers (``"lsuv"``) it recalibrated.
        images: how many images it used.
    """

    method: str
    layers: int
    images: int

    def __str__(self) -> str:
        what = "batch norms re-estimated" if self.method == "norms" else "layers rescaled"
        return f"calibrated ({self.method}): {self.layers} {what} on {self.images} images"


@torch.no_grad()
def calibrate(
    model: nn.Module, images: Images, *, method: Method = "auto", batch_size: int = 64
) -> CalibrationResult:
    """Rescale a converted model from images (no labels) so that it is alive in eval mode.

    Args:
        model: a converted model (B-cos layers and norms), changed in place; it is left in
            evaluation mode.
        images: images in ``[0, 1]``: a tensor ``(N, 3, H, W)``, a dataset or an iterable of
            batches (items or batches may be ``(image, label, ...)`` tuples; labels are unused).
        method: ``"norms"``, ``"lsuv"`` or ``"auto"`` (see the module docstring).
        batch_size: for a tensor or a dataset.

    Raises:
        UsageError: for no images, or ``"norms"`` on a network without B-cos batch norms.

    Example:
        >>> import torch, bcosify
        >>> model, _ = bcosify.convert(bcosify.models.create("torchvision:resnet18", num_classes=4))
        >>> result = calibrate(model, torch.rand(8, 3, 32, 32))
        >>> result.method, result.layers
        ('norms', 20)
    """
    norms = [m for m in model.modules() if isinstance(m, BcosBatchNorm2d)]
    norms = [m for m in norms if m.running_var is not None]
    if method == "auto":
        method = "norms" if norms else "lsuv"
    if method not in ("norms", "lsuv"):
        raise UsageError(f"method must be 'auto', 'norms' or 'lsuv', got {method!r}")
    if method == "norms" and not norms:
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
