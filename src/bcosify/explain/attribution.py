"""The model's own B-cos explanation as a Captum attribution method.

With Captum installed (``pip install 'bcosify[captum]'``), :class:`BcosAttribution` is a
``captum.attr.GradientAttribution``: Captum's wrappers (``NoiseTunnel``), metrics
(``infidelity``, ``sensitivity_max``) and visualisation take it like any of Captum's own methods.
Without Captum it is the same class on a small base with the same ``attribute`` method, so
code that only calls ``attribute`` (bcosify's ``"bcos"`` explainer) does not need Captum.
This module is imported on first use of the name (``bcosify.BcosAttribution``), so that
``import bcosify`` does not import Captum.

Example:
    >>> import torch
    >>> from bcosify.nn import BcosConv2d, InputEncoding
    >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 1),
    ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> BcosAttribution(model).attribute(torch.rand(3, 3, 5, 5), target=1).shape
    torch.Size([3, 3, 5, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

from ..errors import ExplanationError
from .core import Explanation, explain

__all__ = ["CAPTUM_AVAILABLE", "BcosAttribution"]

_F = TypeVar("_F", bound=Callable[..., Any])

try:
    from captum.attr import GradientAttribution as _Base
    from captum.log import log_usage as _log_usage

    CAPTUM_AVAILABLE = True
except ImportError:  # Captum is an optional extra
    CAPTUM_AVAILABLE = False

    class _Base:  # type: ignore[no-redef]
        """What :class:`BcosAttribution` needs of Captum's base class when Captum is absent."""

        def __init__(self, forward_func: Callable[..., Any]) -> None:
            self.forward_func = forward_func

    def _log_usage(*args: Any, **kwargs: Any) -> Callable[[_F], _F]:
        """Captum's usage-logging decorator is a no-op outside Meta; without Captum, none."""
        return lambda method: method


Inputs = Tensor | tuple[Tensor, ...]


class BcosAttribution(_Base):  # type: ignore[misc, valid-type]
    """The B-cos explanation ``x * W(x)`` as a Captum ``GradientAttribution``.

    ``attribute(inputs, target=...)`` returns contributions shaped like ``inputs`` (for a model
    that encodes its input as ``[x, 1 - x]``, folded back to ``x``): the contributions, plus
    the model's named constants (such as the logit bias), sum to the explained logit. Like
    Captum's ``InputXGradient`` it multiplies by the inputs (``multiplies_by_inputs``), and its
    convergence delta is the completeness residual ``score - sum(attributions) - constants``,
    zero up to rounding for a B-cos model.

    Args:
        forward_func: the B-cos model (an ``nn.Module``).

    Example:
        >>> import torch
        >>> from bcosify.nn import BcosConv2d, InputEncoding, LogitBias
        >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 4, 3),
        ...     torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), LogitBias.for_classes(4))
        >>> attributions, delta = BcosAttribution(model).attribute(
        ...     torch.rand(2, 3, 8, 8), target=[0, 3], return_convergence_delta=True)
        >>> attributions.shape, bool(delta.abs().max() < 1e-4)
        (torch.Size([2, 3, 8, 8]), True)
    """

    def __init__(self, forward_func: nn.Module) -> None:
        if not isinstance(forward_func, nn.Module):
            raise ExplanationError(
                "BcosAttribution explains a B-cos model, an nn.Module; got "
                f"{type(forward_func).__name__}. Pass the model itself, not a function of it"
            )
        super().__init__(forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        """Captum protocol: the attributions are inputs times the dynamic weights."""
        return True

    def has_convergence_delta(self) -> bool:
        """Captum protocol: the delta is the completeness residual (see :meth:`attribute`)."""
        return True

    @_log_usage()
    def attribute(
        self,
        inputs: Inputs,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        """Contributions of every input element to the target output, shaped like ``inputs``.

        Args:
            inputs: a batch ``(N, C, H, W)``, or a tuple holding one (as Captum's metrics pass
                it); the result has the same form.
            target: what :func:`bcosify.explain` takes: None for the predicted class (Captum
                would take the output itself; a B-cos classifier has one output per class),
                one class for all, one per example (list or tensor), an embedding, or a
                callable on the output.
            additional_forward_args: further arguments of the model's forward, after the
                input (a value or a tuple of them), as in Captum.
            return_convergence_delta: also return the completeness residual per example.

        Returns:
            The attributions, or ``(attributions, delta)``.
        """
        explanation, as_tuple = self._explain(inputs, target, additional_forward_args)
        attributions = explanation.input_contributions
        result = (attributions,) if as_tuple else attributions
        return (result, explanation.residual) if return_convergence_delta else result

    def compute_convergence_delta(
        self,
        attributions: Inputs,
        inputs: Inputs,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """The completeness residual of ``attributions`` of ``inputs``, per example.

        ``score - sum(attributions) - sum(constants)``, where the score and the constants are
        the model's on ``inputs``: zero (up to rounding) for the attributions
        :meth:`attribute` returns, and the error of any other attribution of the same score.

        Example:
            >>> import torch
            >>> from bcosify.nn import BcosLinear
            >>> method = BcosAttribution(BcosLinear(4, 2))
            >>> x = torch.rand(3, 4)
            >>> delta = method.compute_convergence_delta(torch.zeros(3, 4), x, target=1)
            >>> torch.allclose(delta, method.forward_func(x)[:, 1])
            True
        """
        explanation, _ = self._explain(inputs, target, additional_forward_args)
        given = attributions[0] if isinstance(attributions, tuple) else attributions
        if given.shape[0] != len(explanation):
            raise ExplanationError(
                f"got attributions of {given.shape[0]} examples for {len(explanation)} inputs"
            )
        total = given.detach().flatten(1).double().sum(1).to(explanation.scores.device)
        for value in explanation.constants.values():
            total = total + value.double()
        return (explanation.scores.double() - total).to(explanation.scores.dtype)

    def _explain(
        self, inputs: Inputs, target: Any, additional_forward_args: Any
    ) -> tuple[Explanation, bool]:
        as_tuple = isinstance(inputs, tuple)
        if as_tuple:
            if len(inputs) != 1:
                raise ExplanationError(
                    f"BcosAttribution explains models with one input tensor; got a tuple of "
                    f"{len(inputs)}. Pass further arguments of the forward as "
                    "additional_forward_args"
                )
            inputs = inputs[0]
        model: nn.Module = self.forward_func
        if additional_forward_args is not None:
            extra = (
                additional_forward_args
                if isinstance(additional_forward_args, tuple)
                else (additional_forward_args,)
            )
            model = _WithArguments(model, extra)
        return explain(model, inputs, target), as_tuple


class _WithArguments(nn.Module):
    """``model(x, *arguments)`` as a module of ``x``, so that :func:`explain` can take it."""

    def __init__(self, model: nn.Module, arguments: tuple[Any, ...]) -> None:
        super().__init__()
        self.model = model
        self.arguments = arguments

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, *self.arguments)
