"""The network run once on an example input, for tracing code that branches on shapes.

torch.fx traces a method symbolically: ``if H % window:``, ``B, N, C = x.shape`` in a loop or
``range(H // patch)`` stop it, although they depend only on the input's size. The converter
then traces such a method again with the values of its call on an example input
(:func:`bcosify.convert.tracing.trace_method`). :class:`Examples` provides them: on first need
it builds an untouched copy of the network (the converter edits its own copy as it goes),
runs it once on an image of the model's input size with every module's traced methods
recording their calls, and answers, per module path and method, with the original module at
that path and the arguments of its first call with the constants being traced.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .tracing import matches_constant, method_function

__all__ = ["Examples"]

MethodNames = Callable[[nn.Module, str], list[str]]
"""The methods of a module (at a path) to record, ``forward`` among them."""

# the calls kept per module and method: enough for the distinct constants a module is called
# with (timm's head with and without pre_logits), bounded for modules called in a loop
_CALLS_KEPT = 8


class Examples:
    """What every module's methods were called with when the network ran on one example.

    Args:
        build: returns an untouched copy of the network, as the converter prepared its own
            (called at most once, on first need).
        input_size: the image size ``(H, W)`` to run at; None when unknown (then nothing is
            recorded and :meth:`missing` says to pass one).
        channels: the input's channels.
        methods: the methods of a module to record.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
        >>> examples = Examples(lambda: net, (8, 8), 3, lambda m, p: ["forward"])
        >>> module, values = examples.call("1", "forward", {})
        >>> module is net[1], tuple(values["input"].shape)
        (True, (2, 4, 6, 6))
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        input_size: tuple[int, int] | None,
        channels: int,
        methods: MethodNames,
    ) -> None:
        self._build, self.input_size, self.channels = build, input_size, channels
        self._methods = methods
        self._network: nn.Module | None = None
        self._calls: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._error: str | None = None

    def call(
        self, path: str, method: str, concrete: dict[str, Any]
    ) -> tuple[nn.Module, dict[str, Any]] | None:
        """The original module at ``path`` and the arguments (by name) of the first call of its
        ``method`` whose constants are ``concrete``, else of its first call with ``concrete``
        in place of its constants (timm's ``forward_head(x, pre_logits=True)``, which
        ``forward`` never calls); None when it was not called."""
        if self.input_size is None:
            return None
        network = self._run()
        calls = self._calls.get((path, method), [])
        if network is None or not calls:
            return None
        same = (c for c in calls if all(matches_constant(c.get(k), v) for k, v in concrete.items()))
        arguments = next(same, None) or {**calls[0], **concrete}
        return network.get_submodule(path), arguments

    @property
    def ran(self) -> bool:
        """Whether the network ran on the example: some code was traced at its size."""
        return self._network is not None

    def missing(self, path: str, method: str) -> str:
        """Why :meth:`call` had nothing for this method, as a hint to add to an error."""
        if self.input_size is None:
            return (
                ". If it branches on the input's size only, pass input_size=(height, width) to "
                "convert: the code is then traced at that size"
            )
        if self._error is not None:
            return f" (the example run at {self._size()} failed: {self._error})"
        return f" (the example run at {self._size()} did not call it)"

    def _size(self) -> str:
        height, width = self.input_size or (0, 0)
        return f"{height} x {width}"

    def _run(self) -> nn.Module | None:
        if self._network is not None or self._error is not None:
            return self._network
        network = self._build()
        recorders = []
        for path, module in network.named_modules():
            for method in dict.fromkeys(["forward", *self._methods(module, path)]):
                # an instance's own method (FasterNet's forward) is put back afterwards
                recorders.append((module, method, vars(module).get(method)))
                setattr(module, method, self._recorder(module, path, method))
        first = next((p for p in network.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else None
        generator = torch.Generator().manual_seed(0)
        image = torch.rand(2, self.channels, *self.input_size, generator=generator)
        try:
            with torch.no_grad():
                network(image.to(device=device, dtype=dtype or torch.float32))
        except Exception as error:  # the hint says why; the trace failure stays the error
            self._error = f"{type(error).__name__}: {error}"
            return None
        finally:
            for module, method, own in recorders:
                delattr(module, method)
                if own is not None:
                    setattr(module, method, own)
        self._network = network
        return network

    def _recorder(self, module: nn.Module, path: str, method: str) -> Callable[..., Any]:
        function = method_function(module, method)
        signature = inspect.signature(function)
        calls = self._calls.setdefault((path, method), [])

        def record(*args: Any, **kwargs: Any) -> Any:
            if len(calls) < _CALLS_KEPT:
                try:
                    bound = signature.bind(module, *args, **kwargs)
                except TypeError:
                    pass
                else:
                    bound.apply_defaults()
                    calls.append(_flatten(dict(list(bound.arguments.items())[1:]), signature))
            return function(module, *args, **kwargs)

        return record


def _flatten(arguments: dict[str, Any], signature: inspect.Signature) -> dict[str, Any]:
    """The arguments by name, ``*args`` and ``**kwargs`` under their own names."""
    flat = dict(arguments)
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            flat.update(flat.pop(parameter.name, {}))
    return flat
