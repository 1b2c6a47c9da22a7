"""The explainer registry: every method registers its image and text classes by name, and
:func:`build_explainer` builds one with its options checked (as Zennit's composites register
by name; one method per module, as Captum's ``attr/_core``).

A method's options are the keyword arguments of its class (their defaults the method's), with
the same names for the same thing across methods and modalities: ``n_steps``,
``internal_batch_size``, ``baseline``, ``perturbations_per_eval``, ``n_samples``,
``kernel_width``, ``alpha``, ``seed``, ``batch_size``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from ...errors import EvaluationError

__all__ = ["MODALITIES", "Modality", "build_explainer", "names", "register"]

Modality = Literal["image", "text"]
MODALITIES: tuple[Modality, ...] = ("image", "text")

_REGISTRY: dict[str, dict[str, type]] = {modality: {} for modality in MODALITIES}


def register(name: str, modality: Modality = "image") -> Callable[[type], type]:
    """A class decorator: the class is the explainer ``name`` for ``modality``.

    Example:
        >>> import torch
        >>> @register("constant", "image")
        ... class Constant:
        ...     name = "constant"
        ...     def __init__(self, model, *, value: float = 1.0): self.value = value
        >>> build_explainer("constant", torch.nn.Linear(2, 2), value=2.0).value
        2.0
        >>> _ = _REGISTRY["image"].pop("constant")
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def add(cls: type) -> type:
        if name in _REGISTRY[modality]:
            raise ValueError(f"an {modality} explainer {name!r} is registered already")
        _REGISTRY[modality][name] = cls
        return cls

    return add


def names(modality: Modality = "image") -> tuple[str, ...]:
    """The registered explainers of a modality, in registration order (``"bcos"`` first)."""
    return tuple(_REGISTRY[modality])


def options_of(name: str, modality: Modality = "image") -> dict[str, Any]:
    """The options of an explainer and their defaults.

    Example:
        >>> import bcosify.evaluate
        >>> options_of("integrated_gradients", "text")
        {'n_steps': 50, 'internal_batch_size': 64}
    """
    cls = _class(name, modality)
    parameters = list(inspect.signature(cls).parameters.values())[1:]  # after the model
    return {p.name: p.default for p in parameters}


def _class(name: str, modality: Modality) -> type:
    if modality not in MODALITIES:
        raise EvaluationError(f"modality must be one of {MODALITIES}, got {modality!r}")
    cls = _REGISTRY[modality].get(name)
    if cls is None:
        raise EvaluationError(
            f"unknown {modality} explainer {name!r}; choose one of {', '.join(_REGISTRY[modality])}"
        )
    return cls


def build_explainer(
    name: str, model: nn.Module, modality: Modality = "image", **options: Any
) -> Any:
    """The explainer ``name`` for ``model``, with ``options`` (see :func:`options_of`).

    Raises:
        EvaluationError: for an unknown name or option, or a model the method cannot explain.
    """
    cls = _class(name, modality)
    if not isinstance(model, nn.Module):
        raise EvaluationError(f"explainers need a torch.nn.Module, got {type(model).__name__}")
    accepted = options_of(name, modality)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EvaluationError(
            f"the {modality} explainer {name!r} has no option(s) {', '.join(unknown)}; it "
            f"takes {', '.join(accepted) if accepted else 'no options'}"
        )
    return cls(model, **options)
