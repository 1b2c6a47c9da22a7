"""Reports a person would rather look at than read: HTML with tables, plots and a gallery."""

from .html import Figure, GalleryRow, Report, Table
from .plots import bar_chart, line_chart

__all__ = ["Figure", "GalleryRow", "Report", "Table", "bar_chart", "line_chart"]
