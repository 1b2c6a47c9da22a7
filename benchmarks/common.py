"""What every benchmark script shares: the machine description, a timer, and the docs writer.

Each script owns one section of ``docs/benchmarks.md``, between the markers
``<!-- <name>:start -->`` and ``<!-- <name>:end -->``, and rewrites only that section.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "HEADER",
    "command_line",
    "interleaved_medians",
    "load_average",
    "machine",
    "markers",
    "publish",
    "timed",
    "write_section",
]

HEADER = (
    "# Benchmarks\n\n"
    "Measured numbers, written by the scripts in `benchmarks/`. Each section is rewritten by\n"
    "its own script; edit outside the markers.\n"
)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(
    calls: Mapping[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """The median seconds of each of ``calls`` over ``repeats`` rounds, in turns (every other
    round in reverse order), so that a change in what else the machine runs slows them all."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(repeats):
        for name in calls if repeat % 2 == 0 else reversed(list(calls)):
            times[name].append(timed(calls[name]))
    return {name: statistics.median(values) for name, values in times.items()}


def load_average() -> str:
    """The 1-minute load average: above zero, other processes shared the cores."""
    with contextlib.suppress(OSError, IndexError):
        return Path("/proc/loadavg").read_text().split()[0]
    return "unknown"


def machine() -> str:
    """The CPU, its logical cores, and the torch and Python versions, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; Python {platform.python_version()}"
    )


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace section ``name`` of ``path`` with ``text``, keeping everything else.

    A missing file starts with :data:`HEADER`; a missing section is appended.
    """
    path = Path(path)
    start, end = markers(name)
    block = f"{start}\n{text.strip()}\n{end}"
    current = path.read_text() if path.exists() else HEADER
    if start in current and end in current:
        before, rest = current.split(start, 1)
        current = before + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(current)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How ``benchmarks/<script>`` was run, for the report (``argv`` None: the real one)."""
    given = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([".venv/bin/python", f"benchmarks/{script}", *given])


def publish(text: str, name: str, write: str | Path | None) -> int:
    """Print a script's report and, if ``write`` names a file, write it as section ``name``."""
    print(text)
    if write:
        write_section(write, name, text)
    return 0


T = TypeVar("T")


def in_processes(
    function: Callable[..., T], jobs: Sequence[tuple[Any, ...]], processes: int
) -> Iterator[T]:
    """``function(*job)`` for every job, in order, in ``processes`` worker processes of one
    torch thread each (here, one after another, with ``processes <= 1`` or a single job).

    The workers are spawned, not forked (a forked child of a process whose torch thread pool
    has run can hang), so ``function`` and the jobs must be picklable, and a script must not
    change while its workers start. Jobs not yet started are dropped when the caller stops.
    """
    if processes <= 1 or len(jobs) <= 1:
        yield from (function(*job) for job in jobs)
        return
    pool = ProcessPoolExecutor(
        min(processes, len(jobs)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(1,),
    )
    try:
        yield from pool.map(_call, [(function, job) for job in jobs])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _call(task: tuple[Callable[..., T], tuple[Any, ...]]) -> T:
    function, job = task
    return function(*job)
