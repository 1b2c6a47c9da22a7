"""Data loading that makes training reproducible under resumption and any number of processes.

- The order of examples in an epoch is a permutation drawn from ``(seed, epoch)``; each process
  takes every ``world``-th example of it, so ``world`` processes with a per-process batch ``b``
  see, step by step, exactly the examples one process sees with a batch ``world * b``.
- Every example's random augmentation is seeded from ``(seed, epoch, index)``, so it does not
  depend on the process, the worker or on whether the run was resumed.
- A resumed epoch starts at the batch where the interrupted one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SeededExamples", "build_loader", "mix_seed"]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (SplitMix64 over the parts).

    Example:
        >>> mix_seed(0, 1) == mix_seed(0, 1) != mix_seed(1, 0)
        True
    """
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


class SeededExamples(Dataset):
    """Wraps a dataset so that example ``i`` of epoch ``e`` is drawn with its own seed.

    With ``size``, an epoch has ``size`` examples, each drawn from the dataset at random (with
    replacement, from ``(seed, epoch, i)``), however many the dataset holds: a run's steps are
    then independent of the size of its data (a folder of 50 photos or of 50,000).

    Example:
        >>> class Noise(Dataset):
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return torch.rand(1), i
        >>> data = SeededExamples(Noise(), seed=0)
        >>> bool(data[2][0] == data[2][0]), bool(data[2][0] == data[3][0])
        (True, False)
        >>> drawn = SeededExamples(Noise(), seed=0, size=100)
        >>> len(drawn), {drawn[i][1] for i in range(100)} == {0, 1, 2, 3}
        (100, True)
    """

    def __init__(self, dataset: Dataset, seed: int, size: int | None = None) -> None:
        self.dataset = dataset
        self.seed = seed
        self.size = size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset) if self.size is None else self.size  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        # The CPU generator alone, put back afterwards: torch.manual_seed would also reseed every
        # GPU's generator (and not put it back), and while CUDA is uninitialised it records a
        # stack trace each time: 50x the cost per example, 40% of the demo's training time.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(mix_seed(self.seed, self.epoch, index))
        try:
            if self.size is not None:  # a draw with replacement, from (seed, epoch, index)
                index = mix_seed(self.seed, self.epoch, index, 1) % len(self.dataset)  # type: ignore[arg-type]
            return self.dataset[index]
        finally:
            generator.set_state(state)


class _EpochSampler(Sampler[int]):
    """This process's share of the epoch's permutation, from batch ``start_batch`` on."""

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        batch: int,
        start_batch: int,
        shuffle: bool,
    ) -> None:
        self.indices: list[int]
        if shuffle:
            generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
            order = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        usable = size - size % (world * batch) if shuffle else size  # whole global batches only
        self.indices = order[rank:usable:world][start_batch * batch :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    start_batch: int = 0,
    train: bool = True,
    num_workers: int = 0,
) -> DataLoader:
    """The loader of one epoch for one process (``batch_size`` is per process).

    Training loaders shuffle and drop the last incomplete global batch; evaluation loaders keep
    every example in order, split over the processes.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.arange(10.0))
        >>> batches = [b[0] for b in build_loader(data, batch_size=4, seed=0, epoch=0)]
        >>> [len(b) for b in batches], len(set(torch.cat(batches).tolist()))  # no repeats
        ([4, 4], 8)
    """
    if isinstance(dataset, SeededExamples):
        dataset.epoch = epoch
    sampler = _EpochSampler(
        len(dataset),
        seed,
        epoch,
        rank,
        world,
        batch_size,
        start_batch,
        shuffle=train,  # type: ignore[arg-type]
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=False,
    )
