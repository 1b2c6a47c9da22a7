"""Reports a person would rather look at than read: HTML with tables, plots and a gallery (the
demos' reports, :mod:`bcosify.demo.report`, are built from these)."""

from .html import Figure, GalleryColumn, GalleryRow, Report, Table
from .plots import bar_chart, interval_chart, line_chart

__all__ = [
    "Figure",
    "GalleryColumn",
    "GalleryRow",
    "Report",
    "Table",
    "bar_chart",
    "interval_chart",
    "line_chart",
]
