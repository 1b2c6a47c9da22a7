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

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from .dynamic import GeneratedCode, dynamic_class

__all__ = [
    "CallInfo",
    "ModuleGraph",
    "TraceFailure",
    "install_methods",
    "is_torch_builtin",
    "replace_methods",
    "rewritten_methods",
    "trace_call",
    "trace_method",
]

# the values a method can be specialised to when it is traced (``concrete_args``)
_SIMPLE = (type(None), bool, int, float, str)


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
    """

    module: nn.Module
    path: str
    method: str
    concrete: dict[str, Any]
    graph: fx.Graph
    signal_inputs: set[str]
    gates: set[str] = field(default_factory=set)
    changed: bool = False

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
    info.add(type(module).forward, node.args, node.kwargs, set(nodes))
    (concrete,) = info.variants()
    return trace_method(module, graph.full_path(str(node.target)), "forward", concrete, info.signal)


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
) -> ModuleGraph:
    """Trace ``module.<method>`` with ``concrete`` arguments fixed, submodules as leaves.

    Raises:
        TraceFailure: when torch.fx cannot trace it (its code branches on tensor values).

    Example:
        >>> import torch
        >>> block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
        >>> graph = trace_method(block, "stem", "forward", {}, {"input"})
        >>> [node.target for node in graph.calls()]
        ['0', '1']
    """
    cls = type(module)
    function = getattr(cls, method)
    names = _parameters(function)
    usable = {k: v for k, v in concrete.items() if k in names and _is_simple(v)}
    traced, fixed = _without_variadics(function, usable)
    if traced is not function or method != "forward":
        # fx traces type(root).forward: a subclass lends it the method
        module.__class__ = type(cls.__name__, (cls,), {"forward": traced})
    try:
        graph = _SubmodulesAsLeaves().trace(module, concrete_args=fixed or None)
    except Exception as error:
        raise TraceFailure(f"{type(error).__name__}: {error}") from error
    finally:
        module.__class__ = cls
    return ModuleGraph(module, path, method, usable, graph, set(signal_inputs))


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
            if all(_matches(values.get(k), v) for k, v in concrete.items()):
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


def _matches(value: Any, fixed: Any) -> bool:
    """Whether a call's argument is the value a trace was fixed to. An argument that torch.fx
    is tracing (a Proxy) matches: the first version is the one traced."""
    if isinstance(value, fx.Proxy):
        return True
    return type(value) is type(fixed) and bool(value == fixed)


def _code(graph: ModuleGraph) -> GeneratedCode:
    """The Python code fx generates for ``graph`` (a function taking ``self`` first)."""
    graph.graph.lint()
    return GeneratedCode.of(graph.graph)
