"""Typed, bounded fields: what a file or a set of architecture arguments may say.

Everything bcosify reads from a file that decides what it builds (a saved model's
``config.json``, a model source's architecture arguments, a transformers config) is checked
field by field against a schema before anything acts on it: every field has a type and a range
(sizes are bounded), and a field the schema does not name is refused by name. Nothing a file
says reaches another library's loader unchecked: no loader flag, file path, hub id or code
reference can pass, because no schema has a field for one.

Example:
    >>> schema = Record({"num_classes": Integer(1, 10), "names": Nullable(ListOf(Text()))})
    >>> schema.check({"num_classes": 3, "names": None})
    {'num_classes': 3, 'names': None}
    >>> schema.check({"num_classes": 3, "weights_only": False})
    Traceback (most recent call last):
    ...
    bcosify.schema.FieldError: unknown field 'weights_only' (known: names, num_classes)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_CLASSES",
    "MAX_IMAGE_SIDE",
    "AnyOf",
    "Boolean",
    "Deferred",
    "Field",
    "FieldError",
    "Integer",
    "ListOf",
    "MapOf",
    "Nullable",
    "Number",
    "Record",
    "Text",
    "class_names",
    "image_size",
]

MAX_CLASSES = 100_000
"""The most classes a saved model or a dataset may declare (ImageNet-22k has 21,843)."""

MAX_IMAGE_SIDE = 2048
"""The largest image side a saved config may ask for (explanations allocate by it)."""


class FieldError(ValueError):
    """A value that its schema refuses; the message names the field and what is allowed.

    Callers turn it into the public error of their context (a
    :class:`~bcosify.errors.CheckpointError` for a file, a
    :class:`~bcosify.errors.ModelSourceError` for arguments).
    """


def _at(where: str, message: str) -> FieldError:
    return FieldError(f"{where}: {message}" if where else message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Field:
    """A checked value: :meth:`check` returns the value (possibly normalised) or raises."""

    def check(self, value: Any, where: str = "") -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        """What the field accepts, in a few words."""
        raise NotImplementedError


@dataclass(frozen=True)
class Integer(Field):
    """A whole number in ``[low, high]`` (a bool is not a number here).

    Example:
        >>> Integer(1, 5).check(3)
        3
    """

    low: int
    high: int

    def check(self, value: Any, where: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _at(where, f"expected {self.describe()}, got {_show(value)}")
        if not self.low <= value <= self.high:
            raise _at(where, f"{value} is out of range: expected {self.describe()}")
        return value

    def describe(self) -> str:
        return f"a whole number from {self.low} to {self.high}"


@dataclass(frozen=True)
class Number(Field):
    """A finite number in ``[low, high]``; ``positive`` excludes ``low`` itself.

    Example:
        >>> Number(0.0, 1.0).check(1)
        1.0
        >>> Number(0.0, 1.0).check(float("nan"))
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: nan is out of range: expected a finite number from 0 to 1
    """

    low: float
    high: float
    positive: bool = False

    def check(self, value: Any, where: str = "") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _at(where, f"expected {self.describe()}, got {_show(value)}")
        number = float(value)
        if not (math.isfinite(number) and self.low <= number <= self.high) or (
            self.positive and number <= self.low
        ):
            raise _at(where, f"{_show(value)} is out of range: expected {self.describe()}")
        return number

    def describe(self) -> str:
        bound = "above" if self.positive else "from"
        return f"a finite number {bound} {self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class Boolean(Field):
    """``true`` or ``false``.

    Example:
        >>> Boolean().check(False)
        False
    """

    def check(self, value: Any, where: str = "") -> bool:
        if not isinstance(value, bool):
            raise _at(where, f"expected true or false, got {_show(value)}")
        return value

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Text(Field):
    """A string: one of ``choices``, or matching ``pattern``, at most ``max_length`` long.

    Example:
        >>> Text(choices=("fold", "paper")).check("fold")
        'fold'
    """

    choices: tuple[str, ...] | None = None
    pattern: str | None = None
    max_length: int = 1000

    def check(self, value: Any, where: str = "") -> str:
        if not isinstance(value, str):
            raise _at(where, f"expected {self.describe()}, got {_show(value)}")
        if self.choices is not None and value not in self.choices:
            raise _at(where, f"{_show(value)} is not one of {', '.join(map(repr, self.choices))}")
        if len(value) > self.max_length:
            raise _at(where, f"a text of {len(value)} characters, more than {self.max_length}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _at(where, f"{_show(value)} is not {self.describe()}")
        return value

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.pattern is not None:
            return f"a text matching {self.pattern}"
        return f"a text of at most {self.max_length} characters"


@dataclass(frozen=True)
class Nullable(Field):
    """``null`` or what ``inner`` accepts.

    Example:
        >>> Nullable(Integer(0, 1)).check(None) is None
        True
    """

    inner: Field

    def check(self, value: Any, where: str = "") -> Any:
        return None if value is None else self.inner.check(value, where)

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"


@dataclass(frozen=True)
class AnyOf(Field):
    """What the first of ``options`` that accepts the value returns.

    Example:
        >>> AnyOf(Integer(1, 9), ListOf(Integer(1, 9), 2, 2)).check([3, 4])
        [3, 4]
    """

    options: tuple[Field, ...]

    def __init__(self, *options: Field) -> None:
        object.__setattr__(self, "options", options)

    def check(self, value: Any, where: str = "") -> Any:
        for option in self.options:
            try:
                return option.check(value, where)
            except FieldError:
                continue
        raise _at(where, f"expected {self.describe()}, got {_show(value)}")

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


@dataclass(frozen=True)
class ListOf(Field):
    """A list of ``min_length`` to ``max_length`` items, each checked by ``item``.

    Example:
        >>> ListOf(Number(0, 1), 3, 3).check([0.5, 0.5, 0.5])
        [0.5, 0.5, 0.5]
    """

    item: Field
    min_length: int = 0
    max_length: int = 1000

    def check(self, value: Any, where: str = "") -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise _at(where, f"expected {self.describe()}, got {_show(value)}")
        if not self.min_length <= len(value) <= self.max_length:
            raise _at(where, f"{len(value)} items; expected {self.describe()}")
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def describe(self) -> str:
        if self.min_length == self.max_length:
            count = f"{self.min_length}"
        else:
            count = f"{self.min_length} to {self.max_length}"
        return f"a list of {count} items ({self.item.describe()})"


@dataclass(frozen=True)
class MapOf(Field):
    """An object whose keys ``keys`` and values ``values`` accept, at most ``max_length`` long.

    Example:
        >>> MapOf(Text(pattern="[0-9]+"), Text()).check({"0": "cat"})
        {'0': 'cat'}
    """

    keys: Field
    values: Field
    max_length: int = MAX_CLASSES

    def check(self, value: Any, where: str = "") -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _at(where, f"expected an object, got {_show(value)}")
        if len(value) > self.max_length:
            raise _at(where, f"{len(value)} entries, more than {self.max_length}")
        return {
            self.keys.check(k, f"{where} key"): self.values.check(v, f"{where}.{k}")
            for k, v in value.items()
        }

    def describe(self) -> str:
        return f"an object of {self.values.describe()}"


@dataclass(frozen=True)
class Record(Field):
    """An object with named fields; unknown fields are refused by name, ``required`` ones must
    be present, and ``rule`` (if given) checks the whole record once its fields passed.

    Example:
        >>> Record({"b": Number(1, 10)}, required=("b",)).check({})
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: missing field 'b' (a finite number from 1 to 10)
    """

    fields: Mapping[str, Field]
    required: tuple[str, ...] = ()
    rule: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)

    def check(self, value: Any, where: str = "") -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _at(where, f"expected an object, got {_show(value)}")
        unknown = sorted(str(k) for k in value if k not in self.fields)
        if unknown:
            names = ", ".join(map(repr, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            plural = "s" if len(unknown) > 1 else ""
            raise _at(
                where, f"unknown field{plural} {names} (known: {', '.join(sorted(self.fields))})"
            )
        for name in self.required:
            if name not in value:
                raise _at(where, f"missing field {name!r} ({self.fields[name].describe()})")
        prefix = f"{where}." if where else ""
        checked = {k: self.fields[k].check(v, f"{prefix}{k}") for k, v in value.items()}
        if self.rule is not None:
            try:
                self.rule(checked)
            except FieldError as error:
                raise _at(where, str(error)) from None
        return checked

    def describe(self) -> str:
        return f"an object with the fields {', '.join(sorted(self.fields))}"


@dataclass(frozen=True)
class Deferred(Field):
    """An object whose fields depend on another field: the enclosing :class:`Record`'s
    ``rule`` checks it (a model source's arguments depend on the source).

    Example:
        >>> Deferred().check({"num_classes": 3})
        {'num_classes': 3}
    """

    def check(self, value: Any, where: str = "") -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise _at(where, f"expected an object, got {_show(value)}")
        return dict(value)

    def describe(self) -> str:
        return "an object"


def image_size(high: int = MAX_IMAGE_SIDE) -> Field:
    """An image size: one side ``n`` or ``[height, width]``, each from 1 to ``high``.

    Example:
        >>> image_size().check([224, 224])
        [224, 224]
    """
    side = Integer(1, high)
    return AnyOf(side, ListOf(side, 2, 2))


def class_names() -> Field:
    """A list of class names, or null: 1 to :data:`MAX_CLASSES` strings.

    Example:
        >>> class_names().check(["cat", "dog"])
        ['cat', 'dog']
    """
    return Nullable(ListOf(Text(), 1, MAX_CLASSES))
