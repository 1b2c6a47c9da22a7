"""What a conversion did: its report, and the parts of it that image and text conversions
share (the converted tree's record, the logit bias)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConversionError
from .graph import GraphProblems
from .tree import TreeConversion

__all__ = [
    "ConversionReport",
    "Replacement",
    "logit_bias_constant",
    "logit_bias_value",
    "record_tree",
]


@dataclass(frozen=True)
class Replacement:
    """One module of the original and what it became."""

    path: str
    old: str
    new: str


@dataclass
class ConversionReport:
    """What a conversion did: every module replaced or kept, every constant, every rewrite.

    ``str(report)`` is a readable summary; the lists hold the details.
    """

    model: str
    replaced: list[Replacement] = field(default_factory=list)
    kept: list[Replacement] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many modules went from each type to each, e.g. ``{"Conv2d -> BcosConv2d": 20}``."""
        counts: dict[str, int] = {}
        for item in self.replaced:
            key = f"{item.old} -> {item.new}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def __str__(self) -> str:
        lines = [
            f"Converted {self.model}: {len(self.replaced)} modules replaced, "
            f"{len(self.kept)} kept as they are."
        ]
        lines += [f"  {n:4d} x {key}" for key, n in sorted(self.counts().items())]
        kept: dict[str, int] = {}
        for item in self.kept:
            kept[item.old] = kept.get(item.old, 0) + 1
        if kept:
            lines.append(
                "  kept (already dynamic linear): "
                + ", ".join(f"{n} x {name}" for name, n in sorted(kept.items()))
            )
        lines += ["Constants:"] + [f"  {c}" for c in self.constants or ["none"]]
        lines += ["Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def record_tree(
    report: ConversionReport,
    tree: TreeConversion,
    network: nn.Module,
    model: nn.Module,
    problems: GraphProblems,
) -> None:
    """Add what :func:`convert_tree` did to ``report``; raise if anything could not convert.

    Raises:
        ConversionError: listing every module and operation without a dynamic-linear form.
    """
    report.notes += tree.notes
    report.constants += [f"network.{line}" for line in tree.constants]
    report.replaced += [Replacement(*entry) for entry in tree.replaced]
    report.kept += [Replacement(*entry) for entry in tree.kept]
    if tree.rewritten:
        report.notes.append(
            "rewritten code (everything else keeps its own): "
            + ", ".join(
                f"{path or type(network).__name__}.{'/'.join(names)}"
                for path, names in tree.rewritten.items()
            )
        )
    if problems.lines:
        raise ConversionError(
            f"cannot convert {type(model).__name__}: {len(problems.lines)} part(s) have no "
            "dynamic-linear form:\n" + "\n".join(problems.lines) + "\nFor a module type, add a "
            "rule: bcosify.convert(model, rules={TheType: rule}) where rule(module, context) "
            "returns its B-cos replacement (or the module itself, if it is already dynamic "
            "linear: bcosify.convert.rules.keep). Wrap a functional call in a module to give it "
            "a rule."
        )
    report.constants += _reported_constants(network)
    # notes that modules made by rules leave (a pooler whose tanh became the identity)
    report.notes += [n for _, m in network.named_modules() for n in getattr(m, "bcosify_notes", ())]


def _reported_constants(network: nn.Module) -> list[str]:
    """The constants that modules made by rules report themselves (``reported_constants``)."""
    return [
        f"network.{path}.{name}: added to the signal in '{path}' ({type(module).__name__})"
        for path, module in network.named_modules()
        for name in getattr(module, "reported_constants", ())
    ]


def logit_bias_value(options: Any, num_classes: int | None) -> float | None:
    """The logit bias ``options`` ask for: none, a number, or ``-log(C - 1)`` (``"auto"``;
    none with ``keep_bias``). ``options`` are image or text conversion options.

    Example:
        >>> from bcosify.convert import ConversionOptions
        >>> round(logit_bias_value(ConversionOptions((0.5,), (0.5,)), 11), 4)
        -2.3026
    """
    if options.logit_bias is None or (options.logit_bias == "auto" and options.keep_bias):
        return None
    if options.logit_bias != "auto":
        return float(options.logit_bias)
    if num_classes is None or num_classes < 2:
        raise ConversionError(
            "logit_bias='auto' needs the number of classes, which could not be read off the "
            "last layer; pass logit_bias=<value> or logit_bias=None"
        )
    return -math.log(num_classes - 1)


def logit_bias_constant(options: Any, bias: float, num_classes: int | None) -> str:
    """The report's line for the logit bias.

    Example:
        >>> from bcosify.convert import ConversionOptions
        >>> logit_bias_constant(ConversionOptions((0.5,), (0.5,)), -2.3026, 11)
        'logit_bias.bias = -2.3026 (-log(C - 1) for C = 11)'
    """
    if options.logit_bias == "auto":
        return f"logit_bias.bias = {bias:.4f} (-log(C - 1) for C = {num_classes})"
    return f"logit_bias.bias = {bias:.4f}"
