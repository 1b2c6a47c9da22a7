"""Running under ``torchrun``: process group set-up, rank 0 only writes, metrics reduced."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..device import check_device

__all__ = ["Distributed", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all processes (every process gets the result)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    NCCL on GPUs, gloo on CPUs. Without ``torchrun`` (no ``WORLD_SIZE``), a single process.

    Example:
        >>> setup_distributed("cpu").world  # not under torchrun
        1
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    requested = None if device is None else check_device(device)
    use_cuda = torch.cuda.is_available() if requested is None else requested.type == "cuda"
    if use_cuda:
        # one process may name its GPU; under torchrun each process takes its local rank's
        index = requested.index if requested is not None and world == 1 else None
        chosen = torch.device("cuda", local_rank if index is None else index)
        torch.cuda.set_device(chosen)
    else:
        chosen = requested or torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank, chosen)
