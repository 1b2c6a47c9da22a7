"""Where a module lives."""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["device_of"]


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module without any).

    Example:
        >>> device_of(torch.nn.Linear(2, 2)).type
        'cpu'
    """
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")
