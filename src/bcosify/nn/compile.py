"""``torch.compile`` for B-cos models, in place, with training and explanations kept exact.

``torch.compile(model)`` returns a wrapper (``OptimizedModule``) whose state-dict keys carry an
``_orig_mod.`` prefix and which is no longer a :class:`~bcosify.BcosModel`, so saving, loading
and ``isinstance`` checks see a different object. :func:`compile` compiles the module's own call
instead (``nn.Module.compile``): the model stays the same object, and everything that takes a
model (``bcosify.explain``, ``save_pretrained``, the trainers) takes the compiled one.

What stays correct, and why:

- The hand-written backward passes (:class:`~bcosify.nn.BcosConv2d` at ``B = 2``, batch norm in
  training mode) are ``torch.autograd.Function`` s, which the compiler traces forward and
  backward; the compiled gradients are the same formulas.
- Explanation mode is a flag on the modules (``explaining``). The compiler guards on module
  attributes, so entering or leaving explanation mode (or ``train()`` / ``eval()``) compiles
  another graph instead of replaying the wrong one; after the first two rounds of switching
  (measured: training, input gradient, explanation, twice) every graph is cached.
- During ``bcosify.explain`` the encoding and the constants hand leaf tensors to the explainer
  (``bcosify.nn.trace``); the compiler guards on the active trace and runs those hand-overs
  outside the graph (a graph break), so the explained tensor and constants are the real leaves.

The tests compare outputs, parameter and input gradients and explanations with the eager model.

Example:
    >>> import torch
    >>> import bcosify
    >>> from bcosify.nn import BcosConv2d
    >>> layer = BcosConv2d(2, 3, 3, padding=1)
    >>> bcosify.compile(layer, backend="eager") is layer
    True
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

__all__ = ["compile"]

M = TypeVar("M", bound=nn.Module)


def compile(model: M, **options: Any) -> M:
    """Compile ``model`` in place with ``torch.compile`` and return it (the same object).

    Args:
        model: any module, typically a converted B-cos model.
        **options: passed to ``torch.compile`` (``backend``, ``mode``, ``dynamic``,
            ``fullgraph``, ``options``, ...). ``fullgraph=True`` holds for training and
            evaluation; ``bcosify.explain`` needs the graph breaks described in the module
            docstring, so do not combine it with explanations.

    The first call of each kind (training, evaluation, explanation; each new input shape unless
    ``dynamic=True``) compiles, which takes from seconds to minutes on a CPU; later calls reuse
    the graph. Call ``model.compile(...)`` again to change the options.

    Example:
        >>> import torch
        >>> import bcosify
        >>> from bcosify.nn import BcosConv2d
        >>> layer = bcosify.compile(BcosConv2d(2, 3, 3, padding=1), backend="eager")
        >>> x = torch.rand(1, 2, 5, 5)
        >>> eager = layer.forward(x)  # forward() itself stays eager
        >>> torch.allclose(layer(x), eager)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"bcosify.compile expects a torch.nn.Module, got {type(model).__name__}; for a "
            "function use torch.compile directly"
        )
    model.compile(**options)
    return model
