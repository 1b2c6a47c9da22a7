"""The command line."""

from __future__ import annotations

import subprocess
import sys

from bcosify.cli import main


def test_example_trains_explains_and_writes_pictures(tmp_path, capsys):
    assert main(["example", "--out", str(tmp_path), "--steps", "3", "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "completeness" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "0_colour.png",
        "0_contributions.png",
        "0_figure.png",
        "1_colour.png",
        "1_contributions.png",
        "1_figure.png",
    ]


def test_python_dash_m_and_help():
    result = subprocess.run(
        [sys.executable, "-m", "bcosify", "--help"], capture_output=True, text=True, check=True
    )
    assert "example" in result.stdout
