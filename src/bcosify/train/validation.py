"""Validation during training: loss and top-1 / top-5 accuracy, over all processes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..device import device_of
from .distributed import Distributed
from .loading import build_loader

__all__ = ["validate"]


@torch.no_grad()
def validate(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 64,
    dist: Distributed | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Cross-entropy loss and top-1 / top-5 accuracy of ``model`` on ``data`` (eval mode).

    Under ``torchrun`` each process takes a share and the sums are reduced; the model's
    train/eval mode is restored afterwards. ``progress`` shows a bar of the batches.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.eye(3), torch.arange(3))
        >>> validate(torch.nn.Identity(), data)["val_top1"]
        1.0
    """
    dist = dist or Distributed()
    device = device_of(model)
    was_training = model.training
    model.eval()
    loss = top1 = top5 = count = 0.0
    loader = build_loader(
        data, batch_size=batch_size, seed=0, epoch=0, rank=dist.rank, world=dist.world, train=False
    )
    try:
        for batch in tqdm(loader, desc="accuracy", unit="batch", disable=not progress):
            images, labels = batch[0].to(device), batch[1].to(device)
            logits = model(images).float()
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top1 += float((best[:, 0] == labels).sum())
            top5 += float((best == labels[:, None]).any(1).sum())
            count += len(labels)
    finally:
        model.train(was_training)
    loss, top1, top5, count = dist.sum([loss, top1, top5, count])
    count = max(count, 1.0)
    return {"val_loss": loss / count, "val_top1": top1 / count, "val_top5": top5 / count}
