"""Class lists: a label is an index into one, so every dataset a model meets must share it."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DataError

__all__ = ["check_classes", "format_classes"]


def format_classes(classes: Sequence[str], limit: int = 12) -> str:
    """A class list for a message: the first ``limit`` names, and how many there are.

    Example:
        >>> format_classes(["cat", "dog"])
        '[cat, dog] (2 classes)'
        >>> format_classes([str(i) for i in range(20)], limit=3)
        '[0, 1, 2, ...] (20 classes)'
    """
    names = ", ".join(map(str, classes[:limit])) + (", ..." if len(classes) > limit else "")
    return f"[{names}] ({len(classes)} class{'es' if len(classes) != 1 else ''})"


def check_classes(
    expected: Sequence[str],
    found: Sequence[str],
    expected_name: str,
    found_name: str,
    *,
    subset: bool = False,
) -> None:
    """Raise a :class:`DataError` naming both lists unless ``found`` is ``expected``.

    Labels are indices into a class list, so two lists in another order disagree too. With
    ``subset=True``, ``found`` may hold only some of ``expected``'s classes (its labels are then
    indices into ``expected``).

    Example:
        >>> check_classes(["cat", "dog"], ["cat", "dog"], "the model", "the data")
        >>> check_classes(["cat", "dog"], ["dog"], "the model", "the data", subset=True)
        >>> try:
        ...     check_classes(["cat", "dog"], ["cat", "fox"], "the model", "the data")
        ... except DataError as error:
        ...     print(str(error).split("; ", 1)[1])
        not in the model: fox; missing: dog
    """
    expected, found = [str(c) for c in expected], [str(c) for c in found]
    if subset and set(found) <= set(expected):
        return
    if not subset and found == expected:
        return
    extra = [c for c in found if c not in set(expected)]
    missing = [] if subset else [c for c in expected if c not in set(found)]
    details = []
    if extra:
        details.append(f"not in {expected_name}: {', '.join(extra[:12])}")
    if missing:
        details.append(f"missing: {', '.join(missing[:12])}")
    if not details:
        details.append("the same names in another order, so the labels would not match")
    raise DataError(
        f"the classes of {found_name} differ from those of {expected_name}: {expected_name} has "
        f"{format_classes(expected)}, {found_name} has {format_classes(found)}; "
        + "; ".join(details)
    )
