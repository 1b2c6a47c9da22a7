"""The layer benchmark script runs (quick mode, tiny shapes) so that it cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_layers", ROOT / "benchmarks/bench_layers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def tiny_shapes(bench):
    return [
        bench.LayerShape("tiny 3x3", 2, 6, 4, 4, 3, 1),
        bench.LayerShape("tiny 1x1", 2, 3, 8, 8, 1, 0),
    ]


def test_quick_run_prints_the_table_without_the_official_package(bench, capsys):
    assert bench.main(["--quick"], shapes=tiny_shapes(bench)) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 4  # two shapes x (nn.Conv2d, ours)
    assert all(bench.OFFICIAL not in row for row in rows)
    assert "forward+backward at most 1.25x" in out
    assert "Machine:" in out and "torch" in out


def test_write_replaces_only_its_own_section(bench, tmp_path):
    docs = tmp_path / "docs" / "benchmarks.md"
    bench.write_section(docs, "first")
    assert docs.read_text().startswith("# Benchmarks")
    docs.write_text(docs.read_text() + "\n## Another section\n\nkept\n")
    bench.write_section(docs, "second")
    text = docs.read_text()
    assert "second" in text and "first" not in text
    assert text.count(bench.START) == 1 and text.endswith("kept\n")


def test_missing_official_package_is_a_clear_error(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install"):
        bench.load_official(tmp_path)
