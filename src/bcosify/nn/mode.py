"""Explanation mode: the switch that turns a B-cos network into ``y = W(x) x``.

In explanation mode every dynamic scaling factor (the B-cos ``|cos|^(B-1)``, norm statistics,
activation gates, attention weights) is detached from the autograd graph, so the gradient of an
output with respect to the input is exactly the dynamic weight ``W(x)``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExplanationAware", "explanation_mode", "fx_tracing", "is_explaining"]


def fx_tracing() -> bool:
    """True while torch.fx symbolically traces (not under torch.export or torch.compile).

    Example:
        >>> fx_tracing()
        False
    """
    symbolic = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(symbolic() if symbolic is not None else torch.fx._symbolic_trace.is_fx_tracing())


def _as_leaf(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Call ``module``: torch.fx records this as one operation (see ExplanationAware)."""
    return module(*args, **kwargs)


torch.fx.wrap("_as_leaf")


def _leaf_when_traced(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if fx_tracing():
            return _as_leaf(self, *args, **kwargs)
        return forward(self, *args, **kwargs)

    return wrapper


class ExplanationAware:
    """Mixin for modules whose forward pass changes in explanation mode.

    Subclasses read ``self.explaining`` and call :meth:`detach_if_explaining` on every
    input-dependent factor that must count as a constant in the explanation. Custom user
    modules can inherit from it too; :func:`explanation_mode` finds them by this type.

    Example:
        >>> import torch
        >>> class Gate(ExplanationAware, torch.nn.Module):
        ...     def forward(self, x):
        ...         return x * self.detach_if_explaining(torch.sigmoid(x))
        >>> Gate().explaining
        False
    """

    explaining: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Traced by torch.fx (torchvision's create_feature_extractor, a user's fx pass), a
        # B-cos module is one call of itself, not its operations: its explanation mode and
        # fused kernels keep working in the traced graph, whose mode is not fixed at tracing.
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _leaf_when_traced(cls.__dict__["forward"])  # type: ignore[attr-defined]

    def detach_if_explaining(self, tensor: Tensor) -> Tensor:
        """Return ``tensor`` detached in explanation mode, unchanged otherwise."""
        return tensor.detach() if self.explaining else tensor


class explanation_mode(contextlib.ContextDecorator):
    """Switch every :class:`ExplanationAware` module of ``model`` into explanation mode.

    The modules are collected each time the context is entered, so modules added to the model
    later are found next time. On exit each module gets back exactly the state it had at entry,
    even when the body raises; contexts nest.

    Example:
        >>> import torch
        >>> from bcosify.nn import BcosLinear
        >>> layer = BcosLinear(4, 2)
        >>> with explanation_mode(layer):
        ...     layer.explaining
        True
        >>> layer.explaining
        False
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"explanation_mode expects a torch.nn.Module, got {type(model).__name__}"
            )
        self.model = model
        self.enabled = enabled
        self._saved: list[list[tuple[ExplanationAware, bool]]] = []

    def __enter__(self) -> nn.Module:
        aware = list(_aware_modules(self.model))
        self._saved.append([(m, m.explaining) for m in aware])
        for module in aware:
            module.explaining = self.enabled
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        for module, previous in self._saved.pop():
            module.explaining = previous


def is_explaining(model: nn.Module) -> bool:
    """True if any :class:`ExplanationAware` module of ``model`` is in explanation mode.

    Example:
        >>> from bcosify.nn import BcosLinear
        >>> is_explaining(BcosLinear(2, 2))
        False
    """
    return any(m.explaining for m in _aware_modules(model))


def _aware_modules(model: nn.Module) -> Iterator[ExplanationAware]:
    return (m for m in model.modules() if isinstance(m, ExplanationAware))
