"""A griffe extension that lets the docstrings' Sphinx habits read well on the site.

It first gives back the names that a package exports but griffe takes for the submodule of the
same name (``bcosify.convert.calibrate`` is the function ``calibrate``, imported from the module
``calibrate.py``), so that the package pages document the function.

The docstrings are Google style with Sphinx roles (:func:`name`, :class:`~a.b.C`) and
reStructuredText literal blocks (``text::``). mkdocstrings renders Markdown, so before a
docstring is parsed this extension rewrites:

- a role into code that links to the object's page when the site documents it (an optional
  cross-reference: a name the site does not show stays plain code, with no warning);
- ``Example:`` into ``Examples:``, the section griffe's Google parser knows, so that doctests
  render as code;
- a paragraph ending in ``::`` into one ending in ``:`` (the indented block after it is already
  code in Markdown);
- an argument entry that documents several parameters at once (``train, test: datasets``) into
  one entry per parameter, each with the text.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)
_ARGS = re.compile(r"^(\s*)Args:[ \t]*$")
_SHARED_ENTRY = re.compile(r"^(\s+)(\w+(?:, \w+)+):(.*)$")


class SphinxToMarkdown(griffe.Extension):
    """Rewrite every docstring once the package is loaded (names then resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        everything = list(_walk(pkg))
        _unshadow(everything)
        for obj in everything:
            if not obj.is_alias and obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj)


def _walk(obj: griffe.Object | griffe.Alias) -> Any:
    """Every object and alias defined in the package, without following aliases."""
    yield obj
    if not obj.is_alias:
        for member in obj.members.values():
            yield from _walk(member)


def _unshadow(everything: list[Any]) -> None:
    for module in [obj for obj in everything if not obj.is_alias and obj.is_module]:
        for name in map(str, module.exports or ()):
            shadowed = module.members.get(name)
            imported = module.imports.get(name, "")
            if shadowed is None or shadowed.is_alias or not shadowed.is_module:
                continue
            if imported.rpartition(".")[0] != shadowed.path:
                continue
            exported = shadowed.members[imported.rpartition(".")[2]]
            for alias in everything:
                if alias.is_alias and alias.target_path == shadowed.path:
                    alias.target = exported
                elif alias.is_alias and alias.target_path.startswith(shadowed.path + "."):
                    found = _member(shadowed, alias.target_path)
                    if found is not None:  # else griffe reports the broken import itself
                        alias.target = found
            module.members[name] = griffe.Alias(name, exported, parent=module)


def _member(module: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    obj: Any = module
    for part in path.removeprefix(module.path + ".").split("."):
        obj = obj.members.get(part)
        if obj is None:
            return None
    return obj


def rewrite(text: str, obj: griffe.Object) -> str:
    """The docstring ``text`` of ``obj`` in Markdown."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _LITERAL.sub(r"\1:", text)
    text = _split_shared_entries(text)
    return _ROLE.sub(
        lambda match: _reference(obj, match.group(2), short=bool(match.group(1))), text
    )


def _split_shared_entries(text: str) -> str:
    lines, out = text.splitlines(), []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if _ARGS.match(line):
            section_indent = indent
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        entry = _SHARED_ENTRY.match(line) if section_indent is not None else None
        if entry is None:
            out.append(line)
            i += 1
            continue
        end = i + 1
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        for name in entry.group(2).split(", "):
            out += [f"{entry.group(1)}{name}:{entry.group(3)}", *lines[i + 1 : end]]
        i = end
    return "\n".join(out)


def _reference(obj: griffe.Object, target: str, *, short: bool) -> str:
    target = target.strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    code = f"<code>{html.escape(shown)}</code>"
    path = _resolve(obj, target.removesuffix("()"))
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s scope, or None."""
    if target.startswith("bcosify."):
        return target
    head, _, rest = target.partition(".")
    try:
        path = obj.resolve(head)
    except (griffe.NameResolutionError, ValueError, KeyError):
        return None
    return f"{path}.{rest}" if rest else path
