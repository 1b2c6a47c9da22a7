"""Uncertainty of a measured mean: percentile bootstrap intervals, and comparing them.

A pointing game or a localisation score is a mean over a sample of grids or images; another
sample gives another mean. :func:`bootstrap_interval` says how far: it resamples the values with
replacement, and the middle ``level`` of the resampled means is the interval. Two methods differ
convincingly when their intervals do not overlap (:meth:`Interval.above`), which is stricter
than a test of the difference at the same level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import EvaluationError

__all__ = ["Interval", "bootstrap_interval"]


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval.

    Attributes:
        mean: the mean of the measured values.
        low, high: the interval's ends.
        level: its confidence level, e.g. 0.95.
        count: how many values the mean is over.
    """

    mean: float
    low: float
    high: float
    level: float
    count: int

    def above(self, other: Interval) -> bool:
        """True when this interval lies entirely above ``other`` (low end above its high end).

        Example:
            >>> Interval(0.8, 0.75, 0.85, 0.95, 100).above(Interval(0.6, 0.5, 0.7, 0.95, 100))
            True
        """
        return self.low > other.high

    def below(self, other: Interval) -> bool:
        """True when this interval lies entirely below ``other``.

        Example:
            >>> Interval(0.6, 0.5, 0.7, 0.95, 100).below(Interval(0.65, 0.6, 0.7, 0.95, 100))
            False
        """
        return self.high < other.low

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dictionary (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_interval(
    values: Tensor | Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval at ``level``.

    ``resamples`` samples of the same size are drawn from ``values`` with replacement (seeded,
    so the interval is reproducible); the interval holds the middle ``level`` of their means.
    Values that belong together (the cells of one pointing-game grid) must be averaged into one
    value first: the bootstrap assumes independent values.

    Example:
        >>> interval = bootstrap_interval(torch.linspace(0, 1, 101))
        >>> round(interval.mean, 3), 0.43 < interval.low < 0.5 < interval.high < 0.57
        (0.5, True)
    """
    flat = torch.as_tensor(values, dtype=torch.float64).detach().flatten().cpu()
    if flat.numel() == 0:
        raise EvaluationError("a bootstrap interval needs at least one value")
    if not torch.isfinite(flat).all():
        raise EvaluationError("a bootstrap interval needs finite values; got NaN or infinity")
    if not 0.0 < level < 1.0:
        raise EvaluationError(f"level is a probability in (0, 1), e.g. 0.95; got {level}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise EvaluationError(f"resamples must be a positive integer, got {resamples!r}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(flat.numel(), (resamples, flat.numel()), generator=generator)
    means = flat[picks].mean(1)
    tail = (1.0 - level) / 2
    ends = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=means.dtype))
    return Interval(
        mean=float(flat.mean()),
        low=float(ends[0]),
        high=float(ends[1]),
        level=level,
        count=flat.numel(),
    )
