"""How many CPU threads a command takes: the idle cores, measured now rather than averaged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bcosify import device

# /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice
_STAT = "cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


def _stat_sequence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lines: list[str]) -> None:
    """``/proc/stat`` holds ``lines[0]``, and ``lines[1]`` once the measurement has slept."""
    stat = tmp_path / "stat"
    stat.write_text(lines[0])
    monkeypatch.setattr(device, "_PROC_STAT", str(stat))
    monkeypatch.setattr(device.time, "sleep", lambda seconds: stat.write_text(lines[-1]))


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_busy_cores_counts_the_cpu_time_between_two_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, two_cores: None
) -> None:
    # 100 ticks passed on all cores together; 50 of them busy (user, system), 50 idle
    _stat_sequence(
        monkeypatch,
        tmp_path,
        [
            _STAT.format(user=1000, system=500, idle=8000, iowait=500),
            _STAT.format(user=1030, system=520, idle=8040, iowait=510),
        ],
    )
    assert device.busy_cores() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("load", "busy_ticks", "cores"),
    [
        # the 1-minute average still counts work that just ended; the cores are idle now
        (1.6, 1, 2),
        # one core of two held by other work: half the ticks busy
        (1.0, 50, 1),
    ],
)
def test_the_cores_idle_now_decide_when_the_load_average_says_some_are_busy(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    two_cores: None,
    load: float,
    busy_ticks: int,
    cores: int,
) -> None:
    monkeypatch.setattr(device, "load_average", lambda: load)
    before = _STAT.format(user=1000, system=500, idle=8000, iowait=0)
    after = _STAT.format(user=1000 + busy_ticks, system=500, idle=8100 - busy_ticks, iowait=0)
    _stat_sequence(monkeypatch, tmp_path, [before, after])
    assert device.idle_cores() == cores


def test_without_proc_stat_the_load_average_decides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, two_cores: None
) -> None:
    monkeypatch.setattr(device, "load_average", lambda: 1.2)
    monkeypatch.setattr(device, "_cpu_times", lambda: None)
    assert device.busy_cores() is None
    assert device.idle_cores() == 1
    monkeypatch.setattr(device, "load_average", lambda: None)
    assert device.idle_cores() == 2


def test_an_unreadable_proc_stat_is_no_measurement(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _stat_sequence(monkeypatch, tmp_path, ["intr 1 2 3\n"])
    assert device.busy_cores() is None
    _stat_sequence(monkeypatch, tmp_path, ["cpu  1 2 x 4\n"])
    assert device.busy_cores() is None
    monkeypatch.setattr(device, "_PROC_STAT", str(tmp_path / "absent"))
    assert device.busy_cores() is None
