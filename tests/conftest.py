from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the shared test helpers (nets.py) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))


class SmallDisk:
    """A real, small file system (tmpfs) at ``path`` that :meth:`fill` fills up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def free(self) -> int:
        """Bytes left to write."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write a file that takes all the space but ``leave`` bytes (to the page)."""
        with self.filler.open("ab", buffering=0) as handle:
            try:
                while (free := self.free()) > leave:
                    handle.write(bytes(min(free - leave, 1 << 20)))
            except OSError:  # full to the last page
                pass

    def empty(self) -> None:
        """Remove the filler: the space is back."""
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 32 MiB tmpfs mounted for the test (root only: CI runs as root), else a skip that says
    why: a full disk is only real on a real file system."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
    command = ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"could not mount a small tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield SmallDisk(mount_point)
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
