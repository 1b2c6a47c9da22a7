"""Plots for the report, drawn with matplotlib's object API (no global state, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["bar_chart", "line_chart"]


def line_chart(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Lines ``name -> (x, y)`` in one plot, saved as a PNG.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "p.png"
        >>> line_chart(out, {"a": ([1, 2], [0.5, 0.7])}, title="t", xlabel="x", ylabel="y").exists()
        True
    """
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
    return path


def bar_chart(
    path: Path,
    values: Mapping[str, float],
    *,
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "",
) -> Path:
    """Horizontal bars ``name -> value``, with an optional reference line, saved as a PNG.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "b.png"
        >>> bar_chart(out, {"a": 0.9, "b": 0.3}, title="t", ylabel="score").exists()
        True
    """
    fig = Figure(figsize=(6, 0.45 * len(values) + 1.2), layout="constrained")
    ax = fig.subplots()
    names = list(values)
    ax.barh(names, [values[n] for n in names], color="#4c78a8")
    ax.invert_yaxis()
    if reference is not None:
        ax.axvline(reference, color="#c44", linestyle="--", label=reference_label)
        ax.legend(loc="lower right")
    ax.set(title=title, xlabel=ylabel)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=100)
    return path
