"""Training losses."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import BcosifyError

__all__ = ["classification_loss", "uniform_off_label_targets"]


def uniform_off_label_targets(labels: Tensor, num_classes: int) -> Tensor:
    """One-hot targets whose off-labels are raised to ``1 / C``.

    Example:
        >>> import torch
        >>> uniform_off_label_targets(torch.tensor([1]), 4)
        tensor([[0.2500, 1.0000, 0.2500, 0.2500]])
    """
    one_hot = F.one_hot(labels, num_classes).float()
    return one_hot + (1.0 - one_hot) / num_classes


def classification_loss(kind: str, logits: Tensor, labels: Tensor) -> Tensor:
    """``"ce"``: cross-entropy; ``"bce"``: BCE with uniform off-labels (the B-cos recipe).

    Labels must be class indices, one per example: a mismatch is an error, never broadcast.

    Example:
        >>> import torch
        >>> classification_loss("bce", torch.zeros(2, 3), torch.tensor([0, 2])).shape
        torch.Size([])
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise BcosifyError(
            f"expected logits (N, C) and one label per example (N,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    if kind == "bce":
        targets = uniform_off_label_targets(labels, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)
    raise BcosifyError(f"unknown loss {kind!r}: use 'ce' or 'bce'")
