"""Tracing one method of one module with torch.fx, its submodules as leaves.

The converter never flattens a model into one graph: it keeps the module tree and looks at each
module's own code on its own (:mod:`bcosify.convert.tree`). A :class:`ModuleGraph` is the graph
of one method of one module, whose ``call_module`` nodes are calls of its submodules, never
traced into. Edits to the graph are edits of that module's code; edits of modules (a functional
activation becoming a module, a parameter becoming a linear layer) are made on the real module.
When the graph changed, :func:`install_methods` gives the module a class of its own, a subclass
of its original class whose method runs the edited graph, so that everything else about the
module (its class, attributes, other methods, submodules) stays as it was.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import fx, nn

from .dynamic import GeneratedCode, dynamic_class

__all__ = [
    "CallInfo",
    "Examples",
    "ModuleGraph",
    "TraceFailure",
    "has_plain_example_value",
    "install_methods",
    "is_torch_builtin",
    "matches_constant",
    "method_function",
    "replace_methods",
    "rewritten_methods",
    "trace_call",
    "trace_method",
]

# the values a method can be specialised to when it is traced (``concrete_args``)
_SIMPLE = (type(None), bool, int, float, str)


class Examples(Protocol):
    """The network run once on an example input (:class:`bcosify.convert.examples.Examples`),
    as tracing uses it."""

    def call(
        self, path: str, method: str, concrete: dict[str, Any]
    ) -> tuple[nn.Module, dict[str, Any]] | None:
        """The original module at ``path`` and the arguments of its ``method``'s call."""

    def missing(self, path: str, method: str) -> str:
        """Why :meth:`call` had nothing, as a hint to add to an error."""


class TraceFailure(Exception):
    """torch.fx could not trace a module's method; the message says why."""


@dataclass
class ModuleGraph:
    """The fx graph of ``module.<method>`` with every submodule a leaf, edited in place.

    Attributes:
        module: the real module (not a copy): module-level edits are made on it.
        path: its path in the network being converted (``""`` for the network itself).
        method: the traced method, ``"forward"`` unless a family's glue says otherwise.
        concrete: the arguments the method was specialised to (the same constant at every call).
        graph: the traced graph; ``call_module`` targets are relative to ``module``.
        signal_inputs: the names of the placeholders that carry the explained signal.
        gates: the names of the nodes that compute the gate of a gated product (the converter
            leaves them as they are: the product detaches them).
        changed: set by every edit; a changed graph replaces the method's code.
        examples: the network's example run, for tracing submodules' code that branches on
            shapes (see :func:`trace_method`); None without one.
    """

    module: nn.Module
    path: str
    method: str
    concrete: dict[str, Any]
    graph: fx.Graph
    signal_inputs: set[str]
    gates: set[str] = field(default_factory=set)
    changed: bool = False
    examples: Examples | None = None

    @property
    def label(self) -> str:
        """How problems and notes name this module: ``'layer1.0' (BasicBlock)``."""
        name = type(self.module).__name__
        return f"'{self.path}' ({name})" if self.path else f"the model's own forward ({name})"

    def full_path(self, target: str) -> str:
        """The network path of ``target``, a path relative to this module."""
        return f"{self.path}.{target}" if self.path else target

    def submodule(self, target: str) -> nn.Module:
        return self.module.get_submodule(target)

    def attribute(self, target: str) -> Any:
        return functools.reduce(getattr, target.split("."), self.module)

    def add_submodule(self, prefix: str, module: nn.Module) -> str:
        """Add ``module`` as ``<prefix>_<i>`` (the first free ``i``) and return its name."""
        index = 0
        while hasattr(self.module, f"{prefix}_{index}"):
            index += 1
        name = f"{prefix}_{index}"
        self.module.add_module(name, module)
        self.changed = True
        return name

    def set_submodule(self, target: str, module: nn.Module) -> None:
        """Put ``module`` at ``target`` (replacing a module or a parameter of that name)."""
        owner_path, _, name = target.rpartition(".")
        owner = self.module.get_submodule(owner_path) if owner_path else self.module
        owner._parameters.pop(name, None)
        setattr(owner, name, module)

    def calls(self) -> Iterable[fx.Node]:
        """The ``call_module`` nodes, in execution order."""
        return (n for n in self.graph.nodes if n.op == "call_module")


@dataclass
class CallInfo:
    """How a module is called, over every call site in its ancestors' graphs.

    Attributes:
        signal: parameters that receive the explained signal at some call.
        tensors: parameters that receive another value computed in a graph (a mask).
        calls: per call site, the plain constants it passes (defaults included).
    """

    signal: set[str] = field(default_factory=set)
    tensors: set[str] = field(default_factory=set)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, function: Callable[..., Any], args: tuple, kwargs: dict, signal: set) -> None:
        """Add the call ``function(self, *args, **kwargs)``, whose graph values in ``signal``
        depend on the input."""
        try:
            bound = inspect.signature(function).bind(None, *args, **kwargs)
        except TypeError:  # a call fx recorded in a shape the signature does not show
            self.signal.update(_parameters(function))
            self.calls.append({})
            return
        bound.apply_defaults()
        constants = {}
        for name, value in list(bound.arguments.items())[1:]:
            nodes: list[fx.Node] = []
            fx.node.map_arg(value, nodes.append)
            if any(n in signal for n in nodes):
                self.signal.add(name)
            elif nodes:
                self.tensors.add(name)
            elif _is_simple(value):
                constants[name] = value
        self.calls.append(constants)

    def variants(self) -> list[dict[str, Any]]:
        """The distinct sets of constants the module is called with: one trace each (timm's
        ``head(x)`` and ``head(x, pre_logits=True)`` are two).

        Example:
            >>> import torch
            >>> info = CallInfo()
            >>> info.add(lambda self, x, flag=False: x, (), {"x": 1}, set())
            >>> info.add(lambda self, x, flag=False: x, (), {"x": 1, "flag": True}, set())
            >>> info.variants()
            [{'x': 1, 'flag': False}, {'x': 1, 'flag': True}]
        """
        dynamic = self.signal | self.tensors
        found: list[dict[str, Any]] = []
        for call in self.calls:
            fixed = {k: v for k, v in call.items() if k not in dynamic}
            if not any(_same_constants(fixed, seen) for seen in found):
                found.append(fixed)
        return found or [{}]


def _same_constants(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


def is_torch_builtin(module: nn.Module) -> bool:
    """True for a module type of torch.nn itself, which the converter never traces into
    (a type without a rule is unsupported); containers are traced like user code.

    Example:
        >>> import torch
        >>> is_torch_builtin(torch.nn.Tanh()), is_torch_builtin(torch.nn.Sequential())
        (True, False)
    """
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    name = getattr(type(module), "_bcosify_original", type(module)).__module__
    return name.startswith(("torch.nn", "torch.ao.nn"))


def trace_call(graph: ModuleGraph, node: fx.Node) -> ModuleGraph:
    """The ``forward`` of the submodule that ``node`` calls, traced for this one call (every
    graph value it is passed counted as signal), to look at, not to edit.

    Raises:
        TraceFailure: when it cannot be traced.
    """
    module = graph.submodule(str(node.target))
    info = CallInfo()
    nodes: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), nodes.append)
    info.add(method_function(module, "forward"), node.args, node.kwargs, set(nodes))
    (concrete,) = info.variants()
    path = graph.full_path(str(node.target))
    return trace_method(module, path, "forward", concrete, info.signal, graph.examples)


class _SubmodulesAsLeaves(fx.Tracer):
    """A tracer that never enters a submodule: every call of one is a ``call_module`` node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def trace_method(
    module: nn.Module,
    path: str,
    method: str,
    concrete: dict[str, Any],
    signal_inputs: set[str],
    examples: Examples | None = None,
) -> ModuleGraph:
    """Trace ``module.<method>`` with ``concrete`` arguments fixed, submodules as leaves.

    Code that branches on shapes (``if H % window:``, ``B, N, C = x.shape``, ``range(H //
    p)``) cannot be traced symbolically. With ``examples`` (the network run once on an example
    input, :class:`~bcosify.convert.examples.Examples`), such a method is traced again with the
    values of its call in that run: where Python needs a plain shape value, it gets the
    example's, and the graph gets a guard (``torch._assert``) that fails, saying where, on an
    input for which that code would take another branch. Branches on a tensor's values are
    still refused. Code that takes parts of a submodule's output (``x, (H, W) =
    self.patch_embed(x)``) is traced with the values too, when it can be, since only they say
    which parts are tensors that can carry the signal and which are sizes.

    Raises:
        TraceFailure: when it cannot be traced (its code branches on tensor values).

    Example:
        >>> import torch
        >>> block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
        >>> graph = trace_method(block, "stem", "forward", {}, {"input"})
        >>> [node.target for node in graph.calls()]
        ['0', '1']
    """
    cls = type(module)
    function = method_function(module, method)
    names = _parameters(function)
    usable = {k: v for k, v in concrete.items() if k in names and _is_simple(v)}
    traced, fixed = _without_variadics(function, usable)
    lists = _tensor_lists(examples, path, method, usable, names, function)
    fixed = {**fixed, **{name: [fx.PH] * size for name, size in lists.items()}}
    if traced is not function or function is not cls.forward:
        # fx traces type(root).forward: a subclass lends it the method
        module.__class__ = type(cls.__name__, (cls,), {"forward": traced})
    state = _State(module)
    graph: fx.Graph | None = None
    try:
        try:
            graph = _SubmodulesAsLeaves().trace(module, concrete_args=fixed or None)
        except Exception as error:
            call = examples.call(path, method, usable) if examples is not None else None
            if call is None:
                hint = examples.missing(path, method) if examples is not None else ""
                raise TraceFailure(f"{type(error).__name__}: {error}{hint}") from error
            graph = _trace_with_values(module, path, call, fixed)
        else:
            # ``x, (H, W) = self.patch_embed(x)``: which parts of a submodule's output are
            # tensors, and so can carry the signal, only the values say
            call = examples.call(path, method, usable) if examples and _unpacks(graph) else None
            if call is not None:
                state.restore(_read_attributes(graph))
                with contextlib.suppress(TraceFailure):  # else the symbolic graph, as it was
                    graph = _trace_with_values(module, path, call, fixed)
    finally:
        module.__class__ = cls
        state.restore(_read_attributes(graph) if graph is not None else set())
    signal = set(signal_inputs) | {
        f"{name}_{i}"
        for name, size in lists.items()
        if name in signal_inputs
        for i in range(1, size + 1)
    }
    return ModuleGraph(module, path, method, usable, graph, signal, examples=examples)


def _tensor_lists(
    examples: Examples | None,
    path: str,
    method: str,
    concrete: dict[str, Any],
    names: list[str],
    function: Callable[..., Any],
) -> dict[str, int]:
    """For code that asks ``isinstance`` (SelecSLS's blocks, CoaT's head: ``if
    isinstance(x, list)``, which a placeholder never is), the arguments that were lists of
    tensors in the example run, with their lengths: they are traced as lists of placeholders
    (fx names them ``<name>_1``, ``<name>_2``, ...), so that the code takes the branch it
    takes at run time; the generated code checks the list's length."""
    code = getattr(function, "__code__", None)
    if examples is None or code is None or "isinstance" not in code.co_names:
        return {}
    call = examples.call(path, method, concrete)
    if call is None:
        return {}
    return {
        name: len(value)
        for name, value in call[1].items()
        if name in names
        and name not in concrete
        and isinstance(value, list)
        and value
        and all(isinstance(v, torch.Tensor) for v in value)
    }


class _State:
    """A module's own attributes, to put back after its code ran under a tracer: code that
    caches a value (LeViT's attention biases, keyed by device) or stores one (ConViT's relative
    indices) would otherwise keep a proxy of one trace for the next. Containers are put back
    in place, so that one shared with other objects stays shared."""

    def __init__(self, module: nn.Module) -> None:
        self.attributes = vars(module)
        self.saved = {k: (v, _items(v)) for k, v in self.attributes.items()}

    def restore(self, keep: set[str]) -> None:
        """Put the attributes back, but for the new ones in ``keep`` (the tensor constants fx
        stores on the module for its graph: ``_tensor_constant0``)."""
        for name in [k for k in self.attributes if k not in self.saved and k not in keep]:
            del self.attributes[name]
        for name, (value, items) in self.saved.items():
            self.attributes[name] = value
            if items is not None and not _same_items(_items(value), items):
                value.clear()
                if isinstance(value, list):
                    value.extend(items)
                else:
                    value.update(items)


def _read_attributes(graph: fx.Graph) -> set[str]:
    """The module attributes a graph reads (the first name of each ``get_attr`` target)."""
    return {str(n.target).split(".")[0] for n in graph.nodes if n.op == "get_attr"}


def _items(value: Any) -> list[Any] | None:
    """A container's items (a dict's as key-value pairs), to compare and put back; None for
    anything else."""
    if type(value) is dict:
        return list(value.items())
    return list(value) if type(value) in (list, set) else None


def _same_items(now: list[Any] | None, before: list[Any]) -> bool:
    """The same items, each the same object (values are never compared: they may be tensors)."""

    def same(x: Any, y: Any) -> bool:
        if x is y:
            return True
        pairs = isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y) == 2
        return pairs and x[0] == y[0] and x[1] is y[1]

    return now is not None and len(now) == len(before) and all(map(same, now, before))


def method_function(module: nn.Module, method: str) -> Callable[..., Any]:
    """The function that ``module.<method>`` runs, ``self`` first: the class's, or one the
    instance set for itself (FasterNet's blocks pick ``forward`` in ``__init__``).

    Example:
        >>> import torch
        >>> method_function(torch.nn.ReLU(), "forward") is torch.nn.ReLU.forward
        True
    """
    bound = vars(module).get(method)
    if inspect.ismethod(bound) and bound.__self__ is module:
        return bound.__func__
    return getattr(type(module), method)


def _unpacks(graph: fx.Graph) -> bool:
    """Whether the code takes parts of a submodule's output (a tuple, a list)."""
    return any(
        n.op == "call_function" and n.target is operator.getitem and a.op == "call_module"
        for n in graph.nodes
        for a in n.all_input_nodes[:1]
    )


def _trace_with_values(
    module: nn.Module, path: str, call: tuple[nn.Module, dict[str, Any]], fixed: dict[str, Any]
) -> fx.Graph:
    original, values = call
    for name, value in fixed.items():  # a list traced as placeholders: each has its value
        if isinstance(value, list) and value and all(v is fx.PH for v in value):
            values = {**values, **{f"{name}_{i}": v for i, v in enumerate(values[name], 1)}}
    tracer = _ValuedTracer(original, values, path)
    try:
        return tracer.trace(module, concrete_args=fixed or None)
    except Exception as error:
        raise TraceFailure(
            f"{type(error).__name__}: {error} (traced with the values of the example input too)"
        ) from error


_VALUE = "bcosify_example_value"
_UNKNOWN = object()
_FX = os.path.dirname(fx.__file__)


def has_plain_example_value(node: fx.Node) -> bool:
    """True for a node of a graph traced with example values (:func:`trace_method`) whose value
    holds no tensor: a shape, a size passed along with the signal, a flag. It cannot carry the
    signal, whatever it was computed from.

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(lambda x: x.view(x.shape[0], -1)).graph
        >>> any(has_plain_example_value(n) for n in graph.nodes)  # traced without values
        False
    """
    value = node.meta.get(_VALUE, _UNKNOWN)
    if value is _UNKNOWN:
        return False
    found: list[bool] = []
    fx.node.map_aggregate(value, lambda v: found.append(isinstance(v, torch.Tensor)))
    return not any(found)


class _Concrete:
    """``len``, ``int`` and ``range`` of a traced value: its value on the example input,
    guarded (see :class:`_ValuedTracer`)."""

    tracer: _ValuedTracer

    def __len__(self) -> int:
        return len(self.tracer.concrete_sequence(self))  # type: ignore[arg-type]

    def __int__(self) -> int:
        return self.tracer.concrete(self, int)  # type: ignore[arg-type]

    def __index__(self) -> int:
        return self.tracer.concrete(self, operator.index)  # type: ignore[arg-type]


class _ValuedProxy(_Concrete, fx.Proxy):
    def __getattr__(self, k: str) -> fx.proxy.Attribute:
        return _ValuedAttribute(self, k)

    def __setitem__(self, key: Any, value: Any) -> None:
        # ``xs[i] = branch(xs[i])`` on a list the module was passed (HRNet): recorded, and run
        # on the list at run time as the code does
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _ValuedAttribute(_Concrete, fx.proxy.Attribute):  # ``x.shape``
    pass


class _ValuedTracer(_SubmodulesAsLeaves):
    """Traces a module's code while computing every value on an example call, run by the
    untouched ``original`` module at the same path (so that the module being converted is
    never run). Where the code needs a plain value (``bool``, ``len``, ``int``, iteration) of a
    shape, a dtype or anything else that is not a tensor, it gets the example's, and the graph
    a ``torch._assert`` that the value is the same at run time."""

    def __init__(self, original: nn.Module, values: dict[str, Any], path: str) -> None:
        super().__init__()
        self.original, self.values, self.path = original, values, path
        self._computing = False

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValuedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, *rest, **options):  # type: ignore[no-untyped-def]
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        if isinstance(proxy, fx.Proxy):
            proxy.node.meta[_VALUE] = self._value(kind, target, args, kwargs)
        return proxy

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        # the original's parameters, read while computing a value, are values, not graph nodes
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self._computing:  # the original's submodules, run on values
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def _value(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":  # copied: the code may change it in place
            value = self.values.get(str(target).lstrip("*"), _UNKNOWN)
            if isinstance(value, torch.Tensor):
                return value.clone()
            return list(value) if type(value) is list else value
        unknown = False

        def value_of(a: Any) -> Any:
            nonlocal unknown
            if isinstance(a, fx.Proxy):
                a = a.node.meta.get(_VALUE, _UNKNOWN)
                unknown = unknown or a is _UNKNOWN
            return a

        args, kwargs = fx.node.map_aggregate((args, kwargs), value_of)
        if unknown or kind not in ("get_attr", "call_function", "call_method", "call_module"):
            return _UNKNOWN
        self._computing = True
        try:
            with torch.no_grad():
                if kind == "get_attr":
                    return functools.reduce(getattr, str(target).split("."), self.original)
                if kind == "call_function":
                    return target(*args, **kwargs)
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                return self.original.get_submodule(target)(*args, **kwargs)
        except Exception:  # what it cannot compute stays unknown: only needed where used
            return _UNKNOWN
        finally:
            self._computing = False

    def _plain(self, proxy: fx.Proxy) -> Any:
        value = proxy.node.meta.get(_VALUE, _UNKNOWN)
        if value is _UNKNOWN:
            raise fx.proxy.TraceError(
                "symbolically traced variables cannot be used as inputs to control flow (its "
                "value on the example input could not be computed)"
            )
        if isinstance(value, torch.Tensor):
            raise fx.proxy.TraceError(
                "the code branches on the values of a tensor, not on its shape: "
                "data-dependent control flow"
            )
        return value

    def _guard(self, condition: Any, value: Any) -> None:
        frame = inspect.currentframe()
        while frame is not None and (
            frame.f_code.co_filename.startswith(_FX) or frame.f_code.co_filename == __file__
        ):
            frame = frame.f_back
        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "its code"
        label = f"'{self.path}'" if self.path else "the model"
        message = (
            f"{label} was converted for inputs of the size it was traced at: at {where} its "
            f"code gave {value!r} then and branches differently on this input. Convert the "
            "model again with input_size= the size it runs at."
        )
        self.create_proxy("call_function", torch._assert, (condition, message), {})

    def to_bool(self, obj: fx.Proxy) -> bool:
        taken = bool(self._plain(obj))
        condition = obj if taken else self.create_proxy("call_function", operator.not_, (obj,), {})
        self._guard(condition, taken)
        return taken

    def concrete(self, obj: fx.Proxy, cast: Callable[[Any], int]) -> int:
        value = cast(self._plain(obj))
        self._guard(self.create_proxy("call_function", operator.eq, (obj, value), {}), value)
        return value

    def concrete_sequence(self, obj: fx.Proxy) -> tuple[Any, ...] | list[Any]:
        value = self._plain(obj)
        if not isinstance(value, (tuple, list)):
            raise fx.proxy.TraceError(f"Proxy of a {type(value).__name__} cannot be iterated")
        length = self.create_proxy("call_function", len, (obj,), {})
        self._guard(
            self.create_proxy("call_function", operator.eq, (length, len(value)), {}), len(value)
        )
        return value

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter([obj[i] for i in range(len(self.concrete_sequence(obj)))])


def _parameters(function: Callable[..., Any], variadic: bool = True) -> list[str]:
    """The parameter names of a method, without ``self`` (and without ``*args``/``**kwargs``
    unless ``variadic``)."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return [p.name for p in parameters if variadic or p.kind not in _VARIADIC]


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _without_variadics(
    function: Callable[..., Any], concrete: dict[str, Any]
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """``function`` with its ``*args``/``**kwargs`` fixed to their constants, as a function of
    its named parameters only (fx cannot trace through an unpacked Proxy), and the constants
    left to fix."""
    parameters = list(inspect.signature(function).parameters.values())
    variadic = [p for p in parameters if p.kind in _VARIADIC]
    if not variadic:
        return function, concrete
    named = [p for p in parameters if p.kind not in _VARIADIC]
    args = concrete.get(next((p.name for p in variadic if p.kind == p.VAR_POSITIONAL), ""), ())
    kwargs = concrete.get(next((p.name for p in variadic if p.kind == p.VAR_KEYWORD), ""), {})
    defaults = {p.name: p.default for p in named if p.default is not p.empty}
    header = ", ".join(
        f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else p.name for p in named
    )
    call = ", ".join(
        [named[0].name]
        + [p.name for p in named[1:] if p.kind is not p.KEYWORD_ONLY]
        + ["*_args"]
        + [f"{p.name}={p.name}" for p in named[1:] if p.kind is p.KEYWORD_ONLY]
        + ["**_kwargs"]
    )
    scope = {"_function": function, "_defaults": defaults, "_args": args, "_kwargs": kwargs}
    exec(f"def forward({header}):\n    return _function({call})\n", scope)
    forward = scope["forward"]
    forward.__name__ = function.__name__
    left = {k: v for k, v in concrete.items() if k not in {p.name for p in variadic}}
    return forward, left


def _is_simple(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_simple(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_simple(v) for k, v in value.items())
    return isinstance(value, _SIMPLE)


def rewritten_methods(module: nn.Module) -> tuple[str, ...]:
    """The methods of ``module`` that the converter replaced by edited graphs.

    Example:
        >>> import torch
        >>> rewritten_methods(torch.nn.ReLU())
        ()
    """
    return tuple(getattr(type(module), "_bcosify_rewritten", ()))


@dataclass(frozen=True)
class _Dispatch:
    """A traced method: one version per specialisation, the arguments it was fixed to and its
    code (``None``: the graph did not change, the original method runs)."""

    versions: tuple[tuple[dict[str, Any], GeneratedCode | None], ...]


def install_methods(module: nn.Module, graphs: list[ModuleGraph]) -> tuple[str, ...]:
    """Give ``module`` a subclass of its class whose changed methods run the edited graphs.

    A method traced under several specialisations (timm's ``forward_head`` with
    ``pre_logits`` False and True) dispatches on the specialised arguments; a call with values
    it was not converted for raises a clear error. Methods whose graphs did not change keep
    their original code. Returns the names of the replaced methods.
    """
    by_method: dict[str, list[ModuleGraph]] = {}
    for graph in graphs:
        by_method.setdefault(graph.method, []).append(graph)
    replaced = {
        name: _Dispatch(tuple((g.concrete, _code(g) if g.changed else None) for g in versions))
        for name, versions in by_method.items()
        if any(g.changed for g in versions)
    }
    if replaced:
        module.__class__ = dynamic_class(_rewritten_class, type(module), replaced)
    return tuple(replaced)


def replace_methods(module: nn.Module, methods: dict[str, Callable[..., Any]]) -> None:
    """Give ``module`` a class of its own: a subclass of its class (same name, ``isinstance``
    still true) with ``methods`` in place of its own. The module still pickles when the methods
    are module-level functions (see :mod:`bcosify.convert.dynamic`).

    Example:
        >>> import torch
        >>> relu = torch.nn.ReLU()
        >>> replace_methods(relu, {"forward": lambda self, x: x + 1})
        >>> relu(torch.zeros(1)), isinstance(relu, torch.nn.ReLU), rewritten_methods(relu)
        (tensor([1.]), True, ('forward',))
    """
    module.__class__ = dynamic_class(_rewritten_class, type(module), methods)


def _rewritten_class(cls: type, methods: dict[str, Callable[..., Any] | _Dispatch]) -> type:
    namespace: dict[str, Any] = {
        name: _dispatcher(cls, name, m) if isinstance(m, _Dispatch) else m
        for name, m in methods.items()
    }
    namespace.update(
        {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_bcosify_original": getattr(cls, "_bcosify_original", cls),
            "_bcosify_rewritten": tuple(
                sorted({*getattr(cls, "_bcosify_rewritten", ()), *methods})
            ),
        }
    )
    return type(cls.__name__, (cls,), namespace)


def _dispatcher(cls: type, name: str, dispatch: _Dispatch) -> Callable[..., Any]:
    function = getattr(cls, name)
    signature = inspect.signature(function)
    parameters = _parameters(function, variadic=False)
    options = [(fixed, code.function() if code else None) for fixed, code in dispatch.versions]

    @functools.wraps(function)
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        for concrete, code in options:
            if all(matches_constant(values.get(k), v) for k, v in concrete.items()):
                if code is None:
                    return function(self, *args, **kwargs)
                return code(self, *(values[p] for p in parameters))
        fixed = sorted({k for concrete, _ in options for k in concrete})
        raise TypeError(
            f"{type(self).__name__}.{name} was converted for "
            + " or ".join(str(concrete) for concrete, _ in options)
            + f"; it was called with { ({k: values.get(k) for k in fixed}) }. Convert the model "
            "again if it must run with other arguments."
        )

    return method


def matches_constant(value: Any, fixed: Any) -> bool:
    """Whether a call's argument is the value a trace was fixed to. An argument that torch.fx
    is tracing (a Proxy) matches: the first version is the one traced.

    Example:
        >>> matches_constant(True, True), matches_constant(1, True), matches_constant(2, 2)
        (True, False, True)
    """
    if isinstance(value, fx.Proxy):
        return True
    return type(value) is type(fixed) and bool(value == fixed)


def _code(graph: ModuleGraph) -> GeneratedCode:
    """The Python code fx generates for ``graph`` (a function taking ``self`` first)."""
    graph.graph.lint()
    return GeneratedCode.of(graph.graph)
