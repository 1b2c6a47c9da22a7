"""Plots for the report, drawn with matplotlib's object API (no global state, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..explain.visualize import save_figure

# greys and browns: no model colour of the reports (blue, teal, red, orange) is taken
_REFERENCE_COLOURS = ("#555555", "#9c755f", "#8172b2")

__all__ = ["bar_chart", "interval_chart", "line_chart"]


def line_chart(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    references: Mapping[str, float] | None = None,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Lines ``name -> (x, y)`` in one plot, saved as a PNG; ``references`` are horizontal
    dashed lines ``label -> y``; ``colours`` fixes a line's colour by name (so that one model
    has one colour in every plot). The legend sits below the axes, where it covers no line.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "p.png"
        >>> line_chart(out, {"a": ([1, 2], [0.5, 0.7])}, title="t", xlabel="x", ylabel="y").exists()
        True
    """
    from matplotlib.figure import Figure  # here: importing the report stays fast

    entries = len(series) + len(references or {})
    fig = Figure(figsize=(5.6, 3.4 + 0.22 * ((entries + 1) // 2)), layout="constrained")
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3.5, label=name, color=(colours or {}).get(name))
    for (label, y), colour in zip((references or {}).items(), _REFERENCE_COLOURS, strict=False):
        ax.axhline(y, color=colour, linestyle="--", linewidth=1, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    save_figure(fig, path)
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
    from matplotlib.figure import Figure

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
    save_figure(fig, path)
    return path


def interval_chart(
    path: Path,
    rows: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float, float] | None]],
    *,
    title: str,
    xlabel: str,
    references: Mapping[str, float] | None = None,
) -> Path:
    """Horizontal bars of means with their intervals, one group of bars per row, saved as a PNG.

    ``series`` maps a series name to one ``(mean, low, high)`` per row (None: not measured);
    ``references`` maps a series name to a vertical reference line (a uniform score, say).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "i.png"
        >>> interval_chart(out, ["a", "b"], {"2x2": [(0.8, 0.7, 0.9), None]}, title="t",
        ...                xlabel="score").exists()
        True
    """
    height = 0.28 * len(rows) * max(1, len(series)) + 1.6
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, height), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    colours = ("#4c78a8", "#f58518", "#54a24b", "#b279a2")
    for index, (name, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        y = [i + offset for i, v in enumerate(values) if v is not None]
        kept = [v for v in values if v is not None]
        means = [m for m, _, _ in kept]
        errors = [[m - low for m, low, _ in kept], [high - m for m, _, high in kept]]
        colour = colours[index % len(colours)]
        ax.barh(y, means, height=width, color=colour, label=name, xerr=errors, capsize=2)
        if references and name in references:
            ax.axvline(references[name], color=colour, linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    # below the axes, as in line_chart: a legend inside would cover the longest bars
    fig.legend(loc="outside lower center", ncols=len(series), fontsize="small", frameon=False)
    save_figure(fig, path)
    return path
