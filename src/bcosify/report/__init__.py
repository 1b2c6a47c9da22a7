"""Reports a person would rather look at than read: HTML with tables, plots and a gallery."""

from .demo import DemoExamples, colour_smoothing, write_demo_report
from .html import Figure, GalleryColumn, GalleryRow, Report, Table
from .plots import bar_chart, interval_chart, line_chart

__all__ = [
    "DemoExamples",
    "Figure",
    "GalleryColumn",
    "GalleryRow",
    "Report",
    "Table",
    "bar_chart",
    "colour_smoothing",
    "interval_chart",
    "line_chart",
    "write_demo_report",
]
