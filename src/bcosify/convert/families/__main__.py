"""Rewrite the table of supported architectures in a markdown file (the docs' converting page).

.venv/bin/python -m bcosify.convert.families docs/converting.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from . import supported_markdown

_SECTION = re.compile(r"(<!-- supported:start -->).*?(<!-- supported:end -->)", re.S)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bcosify.convert.families FILE.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    text = path.read_text()
    if not _SECTION.search(text):
        print(f"{path} has no <!-- supported:start --> ... <!-- supported:end --> section")
        return 1
    table = f"\n{supported_markdown()}\n"
    path.write_text(_SECTION.sub(lambda m: m.group(1) + table + m.group(2), text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
