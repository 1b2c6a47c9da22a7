"""Explanation mode at run time: every operation on the signal made dynamic linear as it runs.

A network converted module by module (:mod:`bcosify.convert`) is dynamic linear because each
of its modules and rewritten operations is. A model whose code cannot be traced (a transformers
classifier that no family knows: its forward branches on arguments, builds masks and returns
output objects) is converted by module swaps only (B-cos linear layers, norms without biases,
the token embedding as the explained input) and runs its own code; while it is explained,
:class:`DynamicLinearMode` intercepts that code's tensor operations (a
:class:`torch.overrides.TorchFunctionMode`) and gives each one on the signal its dynamic-linear
form:

- softmax and attention: the weights detached (``scaled_dot_product_attention`` gets detached
  queries and keys);
- a non-linear function of the signal (an activation, a root, a power, an exponential):
  ``f(x) = x * [f(x) / x]``, the bracket detached;
- a layer or RMS norm: its statistics detached;
- a product of two input-dependent tensors: one factor detached, the one computed through a
  non-linear operation (a gate, a norm's scale), else the one with fewer values (broadcast:
  a global context), else the left operand of a matrix product and the right one of an
  elementwise product; a division: the divisor detached;
- a tensor that does not depend on the input, added to or concatenated with the signal (a
  position embedding, a bias, a mask): a named constant of the explanation
  (:func:`~bcosify.nn.trace.traced_constant`, named by the module whose code adds it).

Everything else passes unchanged; the network is then linear in the explained input and the
constants, which the explanation's residual checks for each example. The signal is what
requires grad: the mode freezes the model's parameters while it is active.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from .mode import ExplanationAware
from .trace import traced_constant

__all__ = ["DynamicLinearMode"]

_TAG = "_bcosify_nonlinear"  # set on tensors computed through a non-linear operation

# non-linear functions of one tensor, linearised as x * [f(x) / x]
_UNARY = {
    "gelu",
    "silu",
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "mish",
    "softplus",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "logsigmoid",
    "erf",
    "exp",
    "log",
    "rsqrt",
    "sqrt",
    "reciprocal",
    "abs",
    "sin",
    "cos",
    "square",
    "pow",
}
_SOFTMAX = {"softmax", "log_softmax", "_softmax"}
_PRODUCTS = {"mul", "matmul", "bmm", "einsum", "baddbmm"}
_ADDITIONS = {"add", "sub"}
_DIVISIONS = {"div", "truediv", "true_divide"}
_JOINS = {"cat", "concat", "concatenate", "stack"}
_REDUCTIONS = {"var", "std", "norm", "var_mean", "std_mean"}  # of the signal: a scale


def _canonical(func: Callable[..., Any]) -> tuple[str, bool]:
    """The operation's name without dunders or in-place suffix, and whether its operands come
    reflected (``__rmul__``: ``other * self``)."""
    name = getattr(func, "__name__", "")
    reflected = name.startswith("__r") and name.endswith("__")
    name = name.strip("_")
    if reflected:
        name = name[1:]
    elif name.startswith("i") and name[1:] in _ADDITIONS | _DIVISIONS | {"mul", "matmul"}:
        name = name[1:]  # __iadd__
    return name.rstrip("_"), reflected


def _signal(value: object) -> bool:
    return isinstance(value, Tensor) and value.requires_grad


def _tagged(value: object) -> bool:
    return isinstance(value, Tensor) and getattr(value, _TAG, False)


class DynamicLinearMode(TorchFunctionMode):
    """Run a model's own code with every operation on the signal in its dynamic-linear form
    (see the module's description). Active only while a model converted by module swaps is
    explained; its parameters are frozen meanwhile, so that what requires grad is the signal.
    The code of B-cos modules (:class:`~bcosify.nn.ExplanationAware`) runs as it is: they
    are dynamic linear already.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
        >>> with DynamicLinearMode(torch.nn.Identity()):
        ...     y = torch.tanh(x).sum()
        >>> (g,) = torch.autograd.grad(y, x)
        >>> bool(torch.allclose((g * x).sum(), y))  # complete: y = sum of contributions
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._stack: list[nn.Module] = [model]
        self._inside_bcos = 0  # B-cos modules on the stack: their code is dynamic linear
        self._frozen: list[nn.Parameter] = []
        self._hooks: list[Any] = []
        # the outputs of modules that do not depend on the input (a position embedding), by
        # identity: a constant is named after the module that made it
        self._made: dict[int, tuple[nn.Module, Tensor]] = {}

    def __enter__(self) -> DynamicLinearMode:
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in self._frozen:
            parameter.requires_grad_(False)
        self._hooks = [
            nn.modules.module.register_module_forward_pre_hook(self._enter_module),
            nn.modules.module.register_module_forward_hook(self._leave_module),
        ]
        return super().__enter__()  # type: ignore[return-value]

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        for hook in self._hooks:
            hook.remove()
        self._made.clear()
        for parameter in self._frozen:
            parameter.requires_grad_(True)

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        self._stack.append(module)
        self._inside_bcos += isinstance(module, ExplanationAware)

    def _leave_module(self, module: nn.Module, args: Any, output: Any) -> None:
        if len(self._stack) > 1 and self._stack[-1] is module:
            self._stack.pop()
            self._inside_bcos -= isinstance(module, ExplanationAware)
        if isinstance(output, Tensor) and not output.requires_grad:
            self._made[id(output)] = (module, output)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._inside_bcos:
            return func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        if not any(_signal(v) for v in leaves):
            return func(*args, **kwargs)
        name, reflected = _canonical(func)
        if name in _PRODUCTS or name in _DIVISIONS:
            return _product(func, name, reflected, args, kwargs)  # tags its result itself
        out = self._dynamic(func, name, args, kwargs)
        if name in _UNARY or any(_tagged(v) for v in leaves):
            _tag(out)
        return out

    def _dynamic(
        self, func: Callable[..., Any], name: str, args: tuple[Any, ...], kwargs: dict
    ) -> Any:
        if name in _SOFTMAX or name in _REDUCTIONS:
            return tree_map(_detached, func(*args, **kwargs))
        if name == "scaled_dot_product_attention":  # the weights from detached q and k
            args, kwargs = _detach_at(args, kwargs, (0, "query"), (1, "key"))
            return func(*args, **kwargs)
        if name in _UNARY and _signal(args[0] if args else None):
            return _linearised(func, args, kwargs)
        if name == "layer_norm":
            return self._layer_norm(*args, **kwargs)
        if name == "rms_norm":
            return _rms_norm(*args, **kwargs)
        if name == "linear" and len(args) > 2 and args[2] is not None:
            out = F.linear(args[0], args[1])
            return out + self._constant("bias", args[2], out)
        if name in _ADDITIONS and len(args) >= 2:
            return self._add(func, args, kwargs)
        if name in _JOINS:
            return self._join(func, args, kwargs)
        return func(*args, **kwargs)

    def _constant(self, what: str, value: Tensor, like: Tensor) -> Tensor:
        """``value`` (independent of the input) as a named constant of the explanation."""
        shape = torch.broadcast_shapes(value.shape, like.shape)
        made = self._made.get(id(value))
        module, what = (made[0], "output") if made and made[1] is value else (self._stack[-1], what)
        return traced_constant(module, what, value, like.new_empty(shape), optional=True)

    def _add(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict) -> Any:
        for index in (0, 1):
            value, other = args[index], args[1 - index]
            if _is_constant(value) and _signal(other):
                replaced = list(args)
                replaced[index] = self._constant("constant", value, other)
                return func(*replaced, **kwargs)
        return func(*args, **kwargs)

    def _join(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict) -> Any:
        tensors = args[0] if args else kwargs.get("tensors")
        if not isinstance(tensors, (list, tuple)):
            return func(*args, **kwargs)
        joined = [self._constant("constant", t, t) if _is_constant(t) else t for t in tensors]
        if args:
            return func(joined, *args[1:], **kwargs)
        return func(**{**kwargs, "tensors": joined})

    def _layer_norm(
        self,
        x: Tensor,
        normalized_shape: Any,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        eps: float = 1e-5,
    ) -> Tensor:
        dims = _last_dims(normalized_shape)
        scale = (x.detach().var(dims, unbiased=False, keepdim=True) + eps).rsqrt()
        out = (x - x.mean(dims, keepdim=True)) * scale
        if weight is not None:
            out = out * weight
        if bias is not None:
            out = out + self._constant("bias", bias, out)
        return out


def _detached(value: object) -> object:
    return value.detach() if isinstance(value, Tensor) else value


def _tag(value: object) -> None:
    for tensor in tree_flatten(value)[0]:
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            setattr(tensor, _TAG, True)


def _detach_at(
    args: tuple[Any, ...], kwargs: dict[str, Any], *which: tuple[int, str]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments with those at ``which`` (a position, or the keyword) detached."""
    positional, keywords = list(args), dict(kwargs)
    for index, key in which:
        if index < len(positional):
            positional[index] = _detached(positional[index])
        elif key in keywords:
            keywords[key] = _detached(keywords[key])
    return tuple(positional), keywords


def _linearised(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict) -> Tensor:
    """``f(x) = x * [f(x) / x]``, the bracket detached (0 where ``x`` is 0)."""
    x = args[0]
    out = func(*args, **{k: v for k, v in kwargs.items() if k != "inplace"})
    ratio = torch.where(x != 0, out.detach() / x.detach(), torch.zeros_like(out))
    return x * ratio


def _last_dims(normalized_shape: Any) -> tuple[int, ...]:
    """The dimensions a norm over ``normalized_shape`` reduces: the last ones."""
    return tuple(range(-len(tuple(normalized_shape)), 0))


def _rms_norm(
    x: Tensor, normalized_shape: Any, weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    dims = _last_dims(normalized_shape)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    out = x * (x.detach().pow(2).mean(dims, keepdim=True) + eps).rsqrt()
    return out * weight if weight is not None else out


def _is_constant(value: object) -> bool:
    """A finite floating tensor that does not depend on the input and is not zero everywhere
    (an infinite one, a mask, only ever meets the signal before a softmax)."""
    return (
        isinstance(value, Tensor)
        and value.is_floating_point()
        and not value.requires_grad
        and bool(value.ne(0).any())
        and bool(torch.isfinite(value).all())
    )


def _product(
    func: Callable[..., Any],
    name: str,
    reflected: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """A product (or division) with the signal: where two factors depend on the input, one
    detached (see the module's description); the result tagged if the kept factor is."""
    if name == "einsum":
        positions = [i for i, t in enumerate(args) if _signal(t)]
    elif name == "baddbmm":
        positions = [i for i in (1, 2) if i < len(args) and _signal(args[i])]
    else:
        positions = [i for i in (0, 1) if i < len(args) and _signal(args[i])]
    replaced = list(args)
    if name in _DIVISIONS:
        divisor = 0 if reflected else 1  # __rtruediv__(self, other) is other / self
        if divisor in positions and len(args) > 1:
            replaced[divisor] = _detached(args[divisor])
    elif len(positions) >= 2:
        order = positions[::-1] if reflected else positions  # in the expression's order
        tensors = [args[i] for i in order]
        tagged = [i for i, t in zip(order, tensors, strict=True) if _tagged(t)]
        sizes = {t.numel() for t in tensors}
        if len(tagged) == len(order) - 1:
            kept = next(i for i in order if i not in tagged)
        elif name == "mul" and len(sizes) > 1:
            kept = max(order, key=lambda i: args[i].numel())  # a broadcast factor: a context
        elif name in ("matmul", "bmm", "baddbmm", "einsum"):
            kept = order[-1]  # the values on the right
        else:
            kept = order[0]  # x * gate
        for index in positions:
            if index != kept:
                replaced[index] = _detached(args[index])
    out = func(*replaced, **kwargs)
    if any(_tagged(t) for t in replaced if _signal(t)):
        _tag(out)
    return out
