"""Doctests that need an optional package (open_clip, transformers, timm) skip without it."""

from __future__ import annotations

import importlib.util

import pytest

_OPTIONAL = ("open_clip", "transformers", "timm", "captum")


def _missing(source: str) -> list[str]:
    """The optional packages that ``source`` names (an import, a source like ``"timm:..."`` or
    a function like ``open_clip_source``) and that are not installed."""
    return [n for n in _OPTIONAL if n in source and importlib.util.find_spec(n) is None]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        examples = getattr(getattr(item, "dtest", None), "examples", None)
        if not examples:
            continue
        missing = _missing("".join(example.source for example in examples))
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(missing)}"))
