"""The B-cos explanation as a Quantus ``explain_func``.

Quantus metrics compute explanations by calling ``explain_func(model=model, inputs=x_batch,
targets=y_batch, **explain_func_kwargs)`` with numpy batches; :func:`quantus_explain` has that
signature, so ``metric(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain)`` works
on any B-cos model. It does not import Quantus.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import EvaluationError
from ..explain import explain

__all__ = ["quantus_explain"]

Sign = Literal["positive", "signed", "absolute"]
_SIGNS = ("positive", "signed", "absolute")


def quantus_explain(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int | None,
    *,
    sign: Sign = "positive",
    reduce_channels: bool = True,
    batch_size: int | None = None,
    **unused: Any,
) -> np.ndarray | Tensor:
    """Contribution maps of a B-cos model in Quantus's ``explain_func`` convention.

    Args:
        model: a B-cos model that takes the images as Quantus passes them (for a converted
            model, RGB images in ``[0, 1]``).
        inputs: a batch ``(N, C, H, W)``, numpy (as Quantus passes it) or torch; it is moved
            to the model's device and dtype.
        targets: the class to explain per example (``(N,)``), one class for all, or None for
            the predicted classes.
        sign: ``"positive"`` (the default) keeps the positive contributions, the evidence for
            the class, which is what localisation metrics such as ``RelevanceMassAccuracy``
            and ``PointingGame`` measure and keeps their scores in ``[0, 1]``; ``"signed"``
            keeps the contributions as they are (they sum to the logit, for faithfulness
            metrics); ``"absolute"`` takes their absolute value.
        reduce_channels: sum over the channels to one map ``(N, 1, H, W)``, as the B-cos
            contribution maps are shown; False keeps ``(N, C, H, W)``.
        batch_size: explain at most this many examples at a time (None: all at once).
        **unused: further keyword arguments that Quantus passes on (such as ``device``) are
            accepted and ignored: the model's own device is used.

    Returns:
        float32 attributions, a numpy array for numpy ``inputs`` and a tensor (on the inputs'
        device) for tensor ``inputs``.

    Example:
        >>> import numpy as np, torch
        >>> from bcosify.nn import BcosConv2d, InputEncoding
        >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 1),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> maps = quantus_explain(model, np.random.rand(4, 3, 8, 8), np.array([0, 1, 1, 0]))
        >>> maps.shape, maps.dtype, bool((maps >= 0).all())
        ((4, 1, 8, 8), dtype('float32'), True)
    """
    if sign not in _SIGNS:
        raise EvaluationError(f"sign must be one of {', '.join(_SIGNS)}, got {sign!r}")
    if batch_size is not None and batch_size < 1:
        raise EvaluationError(f"batch_size must be a positive integer, got {batch_size}")
    if not isinstance(model, nn.Module):
        raise EvaluationError(
            f"quantus_explain explains a B-cos nn.Module, got {type(model).__name__}; pass "
            "the model itself to the Quantus metric"
        )
    as_numpy = not isinstance(inputs, Tensor)
    x = torch.as_tensor(np.asarray(inputs)) if as_numpy else inputs
    if x.ndim < 3:
        raise EvaluationError(
            f"quantus_explain needs a batch of images (N, C, H, W), got shape {tuple(x.shape)}"
        )
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    x = x.to(device=device_of(model), dtype=dtype)
    labels = _targets(targets, len(x), x.device)
    step = batch_size or max(1, len(x))
    parts = []
    for start in range(0, len(x), step):
        target = labels if labels is None else labels[start : start + step]
        contributions = explain(model, x[start : start + step], target).input_contributions
        if reduce_channels:
            contributions = contributions.sum(1, keepdim=True)
        parts.append(_signed(contributions, sign))
    maps = torch.cat(parts).float()
    if as_numpy:
        return maps.cpu().numpy()
    return maps.to(inputs.device)


def _targets(targets: Any, count: int, device: torch.device) -> Tensor | None:
    if targets is None:
        return None
    labels = torch.as_tensor(np.asarray(targets) if not isinstance(targets, Tensor) else targets)
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise EvaluationError("targets must be class indices (integers)")
        labels = labels.long()
    if labels.ndim == 0:
        labels = labels.expand(count)
    if labels.shape != (count,):
        raise EvaluationError(
            f"targets must be one class per example, shape ({count},); got {tuple(labels.shape)}"
        )
    return labels.to(device=device, dtype=torch.long)


def _signed(maps: Tensor, sign: str) -> Tensor:
    if sign == "positive":
        return maps.clamp_min(0)
    if sign == "absolute":
        return maps.abs()
    return maps
