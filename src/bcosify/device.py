"""Devices: where a module lives, and whether a device asked for is there."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .errors import UsageError

__all__ = ["check_device", "device_of"]


def device_of(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module without any).

    Example:
        >>> device_of(torch.nn.Linear(2, 2)).type
        'cpu'
    """
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def check_device(device: str) -> torch.device:
    """``device`` as a :class:`torch.device`, with a :class:`UsageError` when it is not a device
    name or not present on this machine.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("tpu9")
        Traceback (most recent call last):
        bcosify.errors.UsageError: unknown device 'tpu9': use cpu, cuda or cuda:<index>
    """
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}: use cpu, cuda or cuda:<index>") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(
                f"device {device!r} asked for, but this machine has no CUDA GPU that PyTorch "
                "can use (torch.cuda.is_available() is False): use --device cpu"
            )
        if chosen.index is not None and chosen.index >= count:
            raise UsageError(f"device {device!r} asked for, but there are {count} CUDA GPUs")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} asked for, but MPS is not available: use cpu")
    return chosen
