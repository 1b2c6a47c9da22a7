"""An mkdocs hook that writes the command-line reference from bcosify's own argument parsers.

A page that holds the line ``<!-- cli-reference -->`` gets, in its place, one section per
command of ``bcosify``: its description, its usage and a table of every flag with its values,
default and help, read from the parser ``bcosify.cli.main.build_parser`` builds. The reference
cannot drift from the code: a new flag appears at the next build.
"""

from __future__ import annotations

import argparse
import html
import importlib
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
SOURCE = Path(__file__).resolve().parents[2] / "src"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    # md_in_html: the tables stay Markdown; the class lets the style sheet keep flags whole
    block = f'<div class="cli-reference" markdown>\n\n{reference(command_line_parser())}\n</div>'
    return markdown.replace(MARKER, block)


def command_line_parser() -> argparse.ArgumentParser:
    """The parser of ``bcosify`` in this checkout (``bcosify.cli.main.build_parser``)."""
    sys.path.insert(0, str(SOURCE))  # document this checkout, not another installed copy
    try:
        cli = importlib.import_module("bcosify.cli.main")
    finally:
        sys.path.remove(str(SOURCE))
    return cli.build_parser()


def reference(parser: argparse.ArgumentParser) -> str:
    """Markdown: the top-level options, then a section per command."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    lines = [
        "## bcosify",
        "",
        _paragraph(parser.description),
        "",
        *_usage(parser),
        *_options(parser),
        "| command | what it does |",
        "| --- | --- |",
        *(
            f"| [`{name}`](#bcosify-{name}) | {_cell(summaries.get(name))} |"
            for name in commands.choices
        ),
        "",
    ]
    for name, subparser in commands.choices.items():
        lines += [f"## bcosify {name}", "", _paragraph(subparser.description), ""]
        lines += [*_usage(subparser), *_options(subparser)]
    return "\n".join(lines)


def _usage(parser: argparse.ArgumentParser) -> list[str]:
    formatter = argparse.HelpFormatter(parser.prog, width=76)  # not the terminal's width
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return ["```text", formatter.format_help().rstrip(), "```", ""]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = [
        _row(action, formatter)
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
    ]
    return ["| flag | value | default | what it does |", "| --- | --- | --- | --- |", *rows, ""]


def _row(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.dest}`"
    if action.required:
        flags += " (required)"
    value = ""
    if action.nargs != 0:
        value = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
        value = f"`{value}`"
    help_text = formatter._expand_help(action) if action.help else ""
    return f"| {flags} | {value} | {_default(action)} | {_cell(help_text)} |"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    default = action.default
    if isinstance(default, (list, tuple)):
        default = " ".join(map(str, default))
    return f"`{default}`"


def _paragraph(text: str | None) -> str:
    """Help text as one line of Markdown: ``<name>`` is text, not a tag, outside code spans."""
    parts = " ".join((text or "").split()).split("`")
    return "`".join(
        part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts)
    )


def _cell(text: str | None) -> str:
    return _paragraph(text).replace("|", "\\|")
