"""A self-contained HTML report: tables, plots and a gallery, referencing PNGs beside it."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "GalleryRow", "Report", "Table"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222;
       line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0 1.6rem; }
th, td { padding: 0.3rem 0.8rem; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.best td { font-weight: 600; background: #eef7ee; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5rem; }
figure { margin: 0; } figcaption { color: #555; font-size: 0.9rem; max-width: 480px; }
.gallery td { text-align: center; padding: 0.2rem; } .gallery img { width: 112px;
  image-rendering: pixelated; border: 1px solid #ccc; background:
  repeating-conic-gradient(#eee 0% 25%, #fff 0% 50%) 50% / 12px 12px; }
.note { color: #555; font-size: 0.9rem; }
"""


@dataclass
class Table:
    """A table with a title; ``highlight`` marks rows (by index) as the best."""

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""
    highlight: Sequence[int] = ()


@dataclass
class Figure:
    """A PNG (a path relative to the report) with a caption."""

    path: str
    caption: str


@dataclass
class GalleryRow:
    """One image of the gallery: its label and one picture per column."""

    label: str
    images: Sequence[str]


@dataclass
class Report:
    """The report's content; :meth:`write` turns it into ``report.html``.

    Example:
        >>> import tempfile, pathlib
        >>> report = Report("Title", "What this is.")
        >>> report.tables.append(Table("Numbers", ["a", "b"], [["1", "2"]]))
        >>> path = report.write(pathlib.Path(tempfile.mkdtemp()))
        >>> "<td>1</td>" in path.read_text()
        True
    """

    title: str
    lead: str
    headline: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    gallery_columns: list[str] = field(default_factory=list)
    gallery: list[GalleryRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def images(self) -> list[str]:
        """Every image the report references (relative paths)."""
        return [f.path for f in self.figures] + [p for row in self.gallery for p in row.images]

    def write(self, directory: Path, name: str = "report.html") -> Path:
        """Write the report; every referenced image must exist in ``directory``."""
        missing = [p for p in self.images() if not (directory / p).is_file()]
        if missing:
            raise FileNotFoundError(f"the report references missing images: {missing}")
        e = html.escape
        parts = [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{e(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{e(self.title)}</h1><p class='lead'>{e(self.lead)}</p>",
        ]
        if self.headline:
            parts.append("<ul>" + "".join(f"<li>{e(h)}</li>" for h in self.headline) + "</ul>")
        for table in self.tables:
            parts.append(f"<h2>{e(table.title)}</h2><table><tr>")
            parts += [f"<th>{e(h)}</th>" for h in table.header]
            parts.append("</tr>")
            for index, row in enumerate(table.rows):
                marker = " class='best'" if index in table.highlight else ""
                parts.append(f"<tr{marker}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
            if table.note:
                parts.append(f"<p class='note'>{e(table.note)}</p>")
        if self.figures:
            parts.append("<h2>Plots</h2><div class='figures'>")
            for figure in self.figures:
                parts.append(
                    f"<figure><img src='{e(figure.path)}' width='480'>"
                    f"<figcaption>{e(figure.caption)}</figcaption></figure>"
                )
            parts.append("</div>")
        if self.gallery:
            parts.append("<h2>Gallery</h2><table class='gallery'><tr><th>class</th>")
            parts += [f"<th>{e(c)}</th>" for c in self.gallery_columns]
            parts.append("</tr>")
            for row in self.gallery:
                cells = "".join(
                    f"<td><img src='{e(p)}' alt='{e(row.label)}'></td>" for p in row.images
                )
                parts.append(f"<tr><td>{e(row.label)}</td>{cells}</tr>")
            parts.append("</table>")
        if self.notes:
            parts.append(
                "<h2>Notes</h2>" + "".join(f"<p class='note'>{e(n)}</p>" for n in self.notes)
            )
        parts.append("</body></html>")
        path = directory / name
        path.write_text("\n".join(parts))
        return path
