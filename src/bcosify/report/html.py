"""A self-contained HTML report: tables, plots and a gallery, referencing PNGs beside it.

The page fits a 1280-pixel window: the text column is at most 1200 pixels wide, and a table
wider than that scrolls inside its own box instead of widening the page. Images are shown at
their own pixel size (upscale small pictures with nearest-neighbour before saving them), so the
browser never blurs them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..serialization import write_text

__all__ = ["Figure", "GalleryColumn", "GalleryRow", "Report", "Table"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1200px; color: #222;
       line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .lead { color: #555; margin-top: 0; max-width: 60rem; }
.scroll { max-width: 100%; overflow-x: auto; margin: 0.8rem 0 0.4rem; }
table { border-collapse: collapse; }
th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; text-align: left;
         vertical-align: top; }
th { background: #f6f6f6; } td.num { text-align: right; white-space: nowrap; }
tr.best td { font-weight: 600; background: #eef7ee; }
td.yes { color: #17692c; font-weight: 600; } td.no { color: #a0161b; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5rem; }
figure { margin: 0; max-width: 100%; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9rem; max-width: 560px; }
.gallery th { font-weight: 600; font-size: 0.8rem; line-height: 1.25; text-align: center;
              vertical-align: bottom; padding: 0.2rem; }
.gallery td { text-align: center; padding: 0.15rem; }
.gallery td:first-child { font-size: 0.85rem; text-align: left; }
.gallery img { display: block; image-rendering: pixelated; border: 1px solid #ccc; }
.gallery img.dark { background: #111; }
.note { color: #555; font-size: 0.9rem; max-width: 60rem; }
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
class GalleryColumn:
    """A column of the gallery: its title, an optional second line (a score, say), and whether
    its pictures are transparent explanations shown on a dark background."""

    title: str
    detail: str = ""
    dark: bool = False


@dataclass
class Report:
    """The report's content; :meth:`write` turns it into ``report.html``.

    Example:
        >>> import tempfile, pathlib
        >>> report = Report("Title", "What this is.")
        >>> report.tables.append(Table("Numbers", ["a", "b"], [["1", "2"]]))
        >>> path = report.write(pathlib.Path(tempfile.mkdtemp()))
        >>> "<td class='num'>1</td>" in path.read_text()
        True
    """

    title: str
    lead: str
    headline: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    gallery_columns: list[GalleryColumn] = field(default_factory=list)
    gallery_title: str = "Gallery"
    gallery_note: str = ""
    gallery: list[GalleryRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # (title, HTML) made by bcosify itself with every text escaped, e.g. highlighted tokens
    sections: list[tuple[str, str]] = field(default_factory=list)

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
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{e(self.title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{e(self.title)}</h1><p class='lead'>{e(self.lead)}</p>",
        ]
        if self.headline:
            parts.append("<ul>" + "".join(f"<li>{e(h)}</li>" for h in self.headline) + "</ul>")
        for table in self.tables:
            parts.append(f"<h2>{e(table.title)}</h2><div class='scroll'><table><tr>")
            parts += [f"<th>{e(h)}</th>" for h in table.header]
            parts.append("</tr>")
            for index, row in enumerate(table.rows):
                marker = " class='best'" if index in table.highlight else ""
                parts.append(f"<tr{marker}>" + "".join(_cell(c) for c in row) + "</tr>")
            parts.append("</table></div>")
            if table.note:
                parts.append(f"<p class='note'>{e(table.note)}</p>")
        if self.figures:
            parts.append("<h2>Plots</h2><div class='figures'>")
            for figure in self.figures:
                parts.append(
                    f"<figure><img src='{e(figure.path)}' alt='{e(figure.caption)}'>"
                    f"<figcaption>{e(figure.caption)}</figcaption></figure>"
                )
            parts.append("</div>")
        if self.gallery:
            parts.append(f"<h2>{e(self.gallery_title)}</h2>")
            if self.gallery_note:
                parts.append(f"<p class='note'>{e(self.gallery_note)}</p>")
            parts.append("<div class='scroll'><table class='gallery'><tr><th>class</th>")
            for column in self.gallery_columns:
                detail = f"<br><span>{e(column.detail)}</span>" if column.detail else ""
                parts.append(f"<th>{e(column.title)}{detail}</th>")
            parts.append("</tr>")
            dark = [column.dark for column in self.gallery_columns]
            for row in self.gallery:
                cells = "".join(
                    f"<td><img src='{e(p)}' alt='{e(row.label)}'"
                    f"{' class=dark' if j < len(dark) and dark[j] else ''}></td>"
                    for j, p in enumerate(row.images)
                )
                parts.append(f"<tr><td>{e(row.label)}</td>{cells}</tr>")
            parts.append("</table></div>")
        for title, fragment in self.sections:
            parts.append(f"<h2>{e(title)}</h2>{fragment}")
        if self.notes:
            parts.append(
                "<h2>Notes</h2>" + "".join(f"<p class='note'>{e(n)}</p>" for n in self.notes)
            )
        parts.append("</body></html>")
        path = directory / name
        write_text(path, "\n".join(parts))
        return path


def _cell(text: str) -> str:
    """A table cell: numbers right-aligned, and "yes" and "no" (a target met or not) coloured."""
    if text in ("yes", "no"):
        marker = f" class='{text}'"
    elif _NUMBER.match(text):
        marker = " class='num'"
    else:
        marker = ""
    return f"<td{marker}>{html.escape(text)}</td>"


# a number, possibly signed, a percentage or with an interval after it; or "n/a"
_NUMBER = re.compile(r"^(n/a|[-+]?\d[\d.,]*%?( \[[-+\d.,% ]+\])?)$")
