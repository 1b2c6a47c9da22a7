"""A run's time budget: the seconds it may spend, and when to stop so that it ends in time."""

from __future__ import annotations

import time

__all__ = ["TimeBudget"]


class TimeBudget:
    """The clock of a run with (or without) a time budget.

    ``spent`` is the training time a resumed run already used (it is kept in the checkpoint),
    so that resumptions share one budget. The run stops before a step that would not leave
    time for the end of the run: one more step, plus ``end_steps`` steps' worth of time for the
    final validation and the written model.

    Example:
        >>> clock = TimeBudget(10.0, spent=4.0)
        >>> round(clock.fraction(), 1)
        0.4
        >>> clock.step_took(1.5); clock.exhausted(end_steps=2)
        False
        >>> clock.step_took(3.0); clock.exhausted(end_steps=2)   # 4 + 3 x 3 s > 10 s
        True
        >>> TimeBudget(None).fraction() is None
        True
    """

    def __init__(self, seconds: float | None, spent: float = 0.0) -> None:
        self.seconds = seconds
        self._start = time.perf_counter() - spent
        self._step_time = 0.0

    def elapsed(self) -> float:
        """Seconds spent, resumptions included."""
        return time.perf_counter() - self._start

    def fraction(self) -> float | None:
        """The fraction of the budget spent (at most 1), None without a budget."""
        if self.seconds is None:
            return None
        return min(1.0, self.elapsed() / self.seconds)

    def step_took(self, seconds: float) -> None:
        """Record a step's duration: the estimate is the slowest of the recent steps, so that a
        slow step (a checkpoint, another process on the machine) is planned for."""
        self._step_time = max(seconds, 0.8 * self._step_time)

    def exhausted(self, end_steps: float = 1.0) -> bool:
        """Whether another step and the run's end would go past the budget."""
        if self.seconds is None:
            return False
        return self.elapsed() + self._step_time * (1.0 + end_steps) >= self.seconds
