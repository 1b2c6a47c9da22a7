"""How modules hand the explained input and their constants to the explainer.

A dynamic-linear network computes ``y = W(x) x + sum_k c_k``, where the ``c_k`` are constants
inside the network (the logit bias, positional embeddings, class tokens). While
:func:`bcosify.explain.explain` runs, a :class:`ExplanationTrace` is active:

- the input encoding calls :func:`traced_input` so that the explanation is taken with respect to
  the encoded ``[x, 1 - x]`` tensor rather than the RGB image;
- every module that adds a constant calls :func:`traced_constant`, which turns the constant into a
  per-example leaf tensor; its contribution to the output is then ``c * dy/dc``.

Outside an explanation both functions return their argument unchanged and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import ExplanationError

__all__ = ["ExplanationTrace", "traced_constant", "traced_input"]

_ACTIVE: ContextVar[ExplanationTrace | None] = ContextVar("bcosify_trace", default=None)


@dataclass
class ExplanationTrace:
    """Collects the explained input and the constant leaves of one forward pass.

    Example:
        >>> import torch
        >>> from bcosify.nn import LogitBias
        >>> bias = LogitBias(-1.0)
        >>> with ExplanationTrace(bias) as trace:
        ...     _ = bias(torch.zeros(2, 3))
        >>> list(trace.constants)
        ['bias']
    """

    model: nn.Module
    encoded_input: Tensor | None = None
    fold_input: Callable[[Tensor], Tensor] | None = None
    constants: dict[str, Tensor] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)
    _names: dict[int, str] = field(default_factory=dict)

    def __enter__(self) -> ExplanationTrace:
        self._names = {id(m): name for name, m in self.model.named_modules()}
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE.reset(self._token)

    def _qualified(self, module: nn.Module, name: str) -> str:
        path = self._names.get(id(module))
        if path is None:
            raise ExplanationError(
                f"{type(module).__name__} was called during the explanation but is not a "
                "submodule of the explained model; register it as a submodule."
            )
        if getattr(module, "names_relative_to_parent", False):
            path = path.rpartition(".")[0]
        return f"{path}.{name}" if path else name


def traced_input(module: nn.Module, encoded: Tensor, fold: Callable[[Tensor], Tensor]) -> Tensor:
    """Mark ``encoded`` as the tensor the explanation is taken with respect to.

    ``fold`` maps contributions on ``encoded`` back to the shape of the module's own input, so that
    Captum-style attributions are shaped like what the user passed in.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> traced_input(nn.Identity(), torch.ones(1), lambda c: c)  # no trace active: unchanged
        tensor([1.])
    """
    trace = _ACTIVE.get()
    if trace is None:
        return encoded
    if trace.encoded_input is not None:
        raise ExplanationError(
            f"the input encoding ran twice in one forward pass (second time in "
            f"'{trace._qualified(module, 'encoding')}'); a model may encode its input only once"
        )
    leaf = encoded.detach().requires_grad_(True)
    trace.encoded_input = leaf
    trace.fold_input = fold
    return leaf.clone()  # not the leaf itself: code may scale it in place (CTRL's embeddings)


def traced_constant(
    module: nn.Module, name: str, value: Tensor, like: Tensor, optional: bool = False
) -> Tensor:
    """Return ``value`` (a constant to be combined with ``like``) as a traced per-example leaf.

    During an explanation the constant is expanded to ``like``'s shape (batch first) and made a
    leaf tensor requiring grad, recorded under ``<module path>.<name>``. Otherwise ``value`` is
    returned as it is. An ``optional`` constant is left out of the explanation when the scores
    do not depend on it (an attention mask, added to scores whose softmax is detached).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> traced_constant(nn.Identity(), "bias", torch.tensor(2.0), torch.zeros(3))
        tensor(2.)
    """
    trace = _ACTIVE.get()
    if trace is None:
        return value
    key = trace._qualified(module, name)
    base, count = key, 1
    while key in trace.constants:  # a module called twice contributes twice
        count += 1
        key = f"{base}#{count}"
    leaf = value.detach().expand_as(like).clone().requires_grad_(True)
    trace.constants[key] = leaf
    if optional:
        trace.optional.add(key)
    return leaf
