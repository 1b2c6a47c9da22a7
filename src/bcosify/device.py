"""Devices: where a module lives, whether a device asked for is there, and how many CPU
threads to use."""

from __future__ import annotations

import itertools
import os

import torch
from torch import nn

from .errors import UsageError

__all__ = ["check_device", "default_device", "device_of", "idle_cores", "load_average"]


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


def default_device() -> torch.device:
    """Where the command line runs by default: the GPU when there is one, else the CPU.

    Example:
        >>> default_device().type in ("cuda", "cpu")
        True
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def idle_cores() -> int:
    """The CPU threads torch would use, less the cores other work keeps busy (at least 1).

    The busy cores are the 1-minute load average (Unix; elsewhere none): torch's threads wait
    for each other at every operation, and when other work holds one of the cores a small
    model's operations take many times longer than on a single thread.

    Example:
        >>> 1 <= idle_cores() <= torch.get_num_threads()
        True
    """
    busy = load_average() or 0.0
    cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), round(cores - busy)))


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_average() -> float | None:
    """The 1-minute load average: how many cores other work keeps busy (None where the system
    does not say, as on Windows).

    Example:
        >>> load_average() is None or load_average() >= 0
        True
    """
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
