"""Devices: where a module lives, whether a device asked for is there, and how many CPU
threads to use."""

from __future__ import annotations

import itertools
import os
import time

import torch
from torch import nn

from .errors import UsageError

__all__ = [
    "busy_cores",
    "check_device",
    "default_device",
    "device_of",
    "idle_cores",
    "load_average",
]


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

    torch's threads wait for each other at every operation, and when other work holds one of
    the cores a small model's operations take many times longer than on a single thread. The
    busy cores are what the 1-minute load average says; when it says some are busy, the CPU
    time the system counts over a moment (``/proc/stat``, Linux) decides instead, since the
    average still counts work that ended up to a minute ago.

    Example:
        >>> 1 <= idle_cores() <= torch.get_num_threads()
        True
    """
    cores = os.cpu_count() or 1
    busy = load_average() or 0.0
    if busy >= 0.5:
        measured = busy_cores()
        busy = busy if measured is None else measured
    return max(1, min(torch.get_num_threads(), round(cores - busy)))


_PROC_STAT = "/proc/stat"


def _cpu_times() -> tuple[int, int] | None:
    """Busy and total CPU time over all cores since boot, in clock ticks (None without
    ``/proc/stat``)."""
    try:
        with open(_PROC_STAT, encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal (guest time is inside user and nice)
    if len(fields) < 5 or fields[0] != "cpu" or not all(v.isdigit() for v in fields[1:9]):
        return None
    ticks = [int(value) for value in fields[1:9]]
    idle = sum(ticks[3:5])
    return sum(ticks) - idle, sum(ticks)


def busy_cores(seconds: float = 0.2) -> float | None:
    """How many cores were busy over the next ``seconds``, from the CPU time the system counts
    (Linux ``/proc/stat``; None elsewhere). This process sleeps meanwhile, so it counts other
    work only.

    Example:
        >>> busy = busy_cores(0.05)
        >>> busy is None or 0 <= busy <= (os.cpu_count() or 1)
        True
    """
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return max(0.0, min(1.0, share)) * (os.cpu_count() or 1)


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
