"""Packages that can be called as their main function: ``bcosify.convert(model)`` converts a
model and ``bcosify.convert.default_rules()`` still reaches the package, and likewise for
``bcosify.explain``. A function of the same name at the top level would hide the package."""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


def make_callable(package: str, function: Callable[..., Any]) -> None:
    """Make the imported package ``package`` callable as ``function``.

    Example:
        >>> import bcosify
        >>> callable(bcosify.convert), callable(bcosify.convert.default_rules)
        (True, True)
        >>> list(inspect.signature(bcosify.explain).parameters)
        ['model', 'inputs', 'target', 'tolerance', 'check']
    """

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    module = sys.modules[package]
    module.__class__ = CallablePackage
    module.__signature__ = inspect.signature(function)  # type: ignore[attr-defined]
