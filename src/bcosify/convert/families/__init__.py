"""Per-family glue: one module per model library, each defining a :class:`Family`.

The generic rules (convolutions, linear layers, norms, activations, attention) are in
:mod:`bcosify.convert.rules`; a family module adds only what its library needs: rule-table
entries for its own building blocks, the CLIP image towers it knows, code paths to switch to
before tracing, methods to trace besides ``forward``, and the architectures it claims to
convert (:func:`supported`, tested). Families import the generic rules, never the other way
round, and are found by looking in this package: adding a family is adding one module that
defines ``FAMILY``. A family whose library is not installed contributes nothing.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..rules import Rule

__all__ = [
    "Family",
    "Support",
    "families",
    "family_rules",
    "image_tower",
    "model_input_size",
    "padded_convolutions",
    "prepare",
    "supported",
    "supported_markdown",
    "traced_methods",
]

Tower = tuple[str, Callable[[Any], nn.Module]]
"""What a CLIP model's image tower is (for the report) and how to get it from the model."""
Methods = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Support:
    """One architecture a family claims, and how far.

    Attributes:
        family: the family's name (``"timm"``).
        architecture: the architecture (``"resnet18"``), as the library names it.
        status: ``"exact"`` (tested: equivalence at B = 1 with biases, completeness with the
            defaults), ``"exact, slow test"`` (the same, in the slow tests) or
            ``"unsupported"``.
        note: what the conversion does or, when unsupported, why not.
    """

    family: str
    architecture: str
    status: str
    note: str = ""


def _no_rules() -> dict[type[nn.Module], Rule]:
    return {}


def _no_towers() -> dict[type[nn.Module], Tower]:
    return {}


def _no_notes(model: nn.Module) -> list[str]:
    return []


def _no_methods(module: nn.Module, path: str) -> Methods | None:
    return None


def _no_size(model: nn.Module) -> tuple[int, int] | None:
    return None


def _no_types() -> tuple[type[nn.Module], ...]:
    return ()


@dataclass(frozen=True)
class Family:
    """What one model library contributes to the converter.

    Attributes:
        name: the library (``"torchvision"``, ``"timm"``).
        rules: rule-table entries for the library's building blocks (empty when the library
            is not installed).
        towers: ``{model type: (what is converted, how to get it)}`` for CLIP models, whose
            image tower is converted.
        prepare: switches a model (a copy) to code paths the converter can trace; returns notes.
        methods: the methods of a module to trace instead of ``forward`` (with arguments to
            fix), or None.
        input_size: the image size ``(H, W)`` a model of the library runs at, or None.
        padded_convolutions: its ``nn.Conv2d`` subclasses that pad their input with zeros in
            ``forward`` and then convolve (TensorFlow's 'same' padding): a first layer the
            input encoding folds into as into a convolution.
        supported: the architectures the family claims.
    """

    name: str
    rules: Callable[[], dict[type[nn.Module], Rule]] = _no_rules
    towers: Callable[[], dict[type[nn.Module], Tower]] = _no_towers
    prepare: Callable[[nn.Module], list[str]] = _no_notes
    methods: Callable[[nn.Module, str], Methods | None] = _no_methods
    input_size: Callable[[nn.Module], tuple[int, int] | None] = _no_size
    padded_convolutions: Callable[[], tuple[type[nn.Module], ...]] = _no_types
    supported: tuple[Support, ...] = field(default=())


@functools.cache
def families() -> tuple[Family, ...]:
    """Every family module of this package, in name order.

    Example:
        >>> [family.name for family in families()]
        ['open_clip', 'timm', 'torchvision', 'transformers', 'transformers_text']
    """
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):  # __main__: the docs table's writer
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.append(module.FAMILY)
    return tuple(found)


def family_rules() -> dict[type[nn.Module], Rule]:
    """The rule-table entries of every family."""
    rules: dict[type[nn.Module], Rule] = {}
    for family in families():
        rules.update(family.rules())
    return rules


def image_tower(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module to convert for a CLIP model or image tower, and a note; None for others.

    Example:
        >>> import open_clip
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = open_clip.CLIP(8, vision, text)
        >>> tower, note = image_tower(clip)
        >>> tower is clip.visual
        True
    """
    for family in families():
        entry = family.towers().get(type(model))
        if entry is not None:
            what, build = entry
            tower = build(model)
            return tower, (
                f"{type(model).__name__}: converted {what} ({type(tower).__name__}), a CLIP "
                "image tower, whose output is the image embedding (no logit bias)"
            )
    return None


def prepare(model: nn.Module) -> list[str]:
    """Let every family switch ``model`` (a copy) to code paths the converter can trace."""
    return [note for family in families() for note in family.prepare(model)]


def padded_convolutions() -> tuple[type[nn.Module], ...]:
    """Every family's convolutions that pad their input with zeros in ``forward``.

    Example:
        >>> import timm
        >>> timm.layers.Conv2dSame in padded_convolutions()
        True
    """
    return tuple(t for family in families() for t in family.padded_convolutions())


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size ``(H, W)`` the model runs at, where its library records one.

    Example:
        >>> import timm
        >>> model_input_size(timm.create_model("vit_tiny_patch16_224", img_size=64))
        (64, 64)
    """
    for family in families():
        size = family.input_size(model)
        if size is not None:
            return size
    return None


def traced_methods(module: nn.Module, path: str) -> Methods:
    """The methods of ``module`` to trace, with arguments to fix: ``forward`` unless a family
    says otherwise (timm classifiers: ``forward_features`` and ``forward_head``).

    Example:
        >>> import torch
        >>> traced_methods(torch.nn.Sequential(), "")
        [('forward', {})]
    """
    for family in families():
        methods = family.methods(module, path)
        if methods is not None:
            return methods
    return [("forward", {})]


def supported() -> list[Support]:
    """Every architecture the families claim, with its status (each ``exact`` claim is tested).

    Example:
        >>> ("torchvision", "resnet50", "exact") in {
        ...     (s.family, s.architecture, s.status) for s in supported()}
        True
    """
    return [entry for family in families() for entry in family.supported]


def supported_markdown() -> str:
    """The table of :func:`supported` that the docs' converting page shows.

    Example:
        >>> supported_markdown().splitlines()[0]
        '| family | architecture | status | notes |'
    """
    lines = ["| family | architecture | status | notes |", "|---|---|---|---|"]
    lines += [f"| {s.family} | {s.architecture} | {s.status} | {s.note} |" for s in supported()]
    return "\n".join(lines)
