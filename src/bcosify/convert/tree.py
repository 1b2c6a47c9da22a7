"""Converting a module tree in place, module by module.

Every module keeps its path. A module whose type has a rule is replaced by the rule's result
(its children are the rule's business). Any other module on the explained path is traced on
its own, its submodules as leaves (:mod:`bcosify.convert.tracing`): its own operations are
checked (:mod:`bcosify.convert.graph`), its submodules are visited in turn with what its code
passes them, and only when something in its own code must change (a functional activation, an
attention call, a constant to report, the classifier moved before the pooling) does it get a
rewritten method; its class, attributes and other methods stay. Modules called only on
constants (an MLP computing a position bias) keep their function; modules the forward never
calls are left as they are and named in a note.

Callers of a module are always its ancestors, so visiting paths by depth sees every call of a
module before the module itself.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ..nn import ConstantTerms, ExplanationAware
from .examples import Examples
from .graph import GraphProblems, check_and_rewrite, ends_in_bounded_gate, signal_nodes
from .head import ContinueIn, move_classifier_before_pool
from .options import ConversionOptions
from .products import rewrite_functional_linear, rewrite_parameter_products
from .rules import Rule, RuleContext, UnsupportedModule, keep, qkv_projection
from .tracing import (
    CallInfo,
    ModuleGraph,
    TraceFailure,
    install_methods,
    is_torch_builtin,
    method_function,
    trace_call,
    trace_method,
)

__all__ = ["MethodsFor", "TreeConversion", "convert_tree", "root_call"]

MethodsFor = Callable[[nn.Module, str], list[tuple[str, dict[str, Any]]]]
"""``methods(module, path)``: the methods to trace, with arguments to fix, e.g.
``[("forward", {})]``; a family's glue may name others (timm's ``forward_features`` and
``forward_head``, which its ``forward`` calls)."""

_TRACE_HINT = (
    "Its code probably branches on tensor values. Give that module a rule "
    "(convert(..., rules={TheModule: rule})) so that it is converted as a whole."
)


@dataclass
class TreeConversion:
    """What :func:`convert_tree` did.

    Attributes:
        replaced, kept: ``(path, old type, new type)`` of every module a rule replaced or kept.
        notes: lines for the conversion report.
        constants: one line per constant routed through ConstantTerms.
        leaves: the network paths of the modules with a rule, in the order the forward calls
            them (the last linear or convolution is the classifier).
        rewritten: ``path -> methods`` of the modules whose code was rewritten.
    """

    replaced: list[tuple[str, str, str]] = field(default_factory=list)
    kept: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)
    rewritten: dict[str, tuple[str, ...]] = field(default_factory=dict)


def root_call(network: nn.Module, method: str) -> CallInfo:
    """The call of the network's ``method`` on the image alone (other arguments default).

    Example:
        >>> import torch
        >>> root_call(torch.nn.Conv2d(3, 4, 1), "forward").signal
        {'input'}
    """
    info = CallInfo()
    image = fx.Graph().placeholder("image")
    info.add(method_function(network, method), (image,), {}, {image})
    return info


def convert_tree(
    network: nn.Module,
    table: dict[type[nn.Module], Rule],
    options: ConversionOptions,
    problems: GraphProblems,
    methods: MethodsFor,
    root: CallInfo | None = None,
    examples: Examples | None = None,
) -> TreeConversion:
    """Convert ``network`` in place: rules for the modules that have one, the rest checked and,
    where needed, rewritten (see the module docstring). Problems are added to ``problems``;
    the tree is only consistent when there are none.

    ``root`` is how the network itself is called; by default (:func:`root_call`) on the
    signal alone, its other arguments at their defaults. A text model's call also passes an
    attention mask, a tensor that is not the signal (see :mod:`bcosify.convert.text`).
    ``examples``, the network run on an example input, lets code that branches on shapes be
    traced (:func:`~bcosify.convert.tracing.trace_method`)."""
    walker = _Walker(network, table, options, problems, methods, examples)
    if root is not None:
        walker.calls[""] = root
    walker.run()
    return walker.result


class _Walker:
    def __init__(
        self,
        network: nn.Module,
        table: dict[type[nn.Module], Rule],
        options: ConversionOptions,
        problems: GraphProblems,
        methods: MethodsFor,
        examples: Examples | None = None,
    ) -> None:
        self.network = network
        self.examples = examples
        self.table = table
        self.options = options
        self.problems = problems
        self.methods = methods
        self.result = TreeConversion()
        self.calls: dict[str, CallInfo] = {}
        self.graphs: dict[str, list[ModuleGraph]] = {}
        self.overrides: dict[str, Rule] = {}
        self.closed: set[str] = set()  # subtrees handled as a whole (rules, constants only)
        # module id -> (module, its replacement), for a module at two paths; holding the module
        # keeps its id from being reused by a module created later
        self.done: dict[int, tuple[nn.Module, nn.Module]] = {}
        self.head_owner: str | None = ""
        # module -> whether it computes a gate (the module itself the key: an id could be reused)
        self._gate_modules: dict[nn.Module, bool] = {}
        self._queue: list[tuple[int, int, str]] = []
        self._seen: set[str] = set()

    def run(self) -> None:
        self._push("")
        while self._queue:
            _, _, path = heapq.heappop(self._queue)
            if not self._inside_closed(path):
                self._visit(path)
        for path, graphs in self.graphs.items():
            module = self._module(path)
            self._note_training_dependence(path, module, graphs)
            own = [g.method for g in graphs if g.changed and g.method in vars(module)]
            if own:  # the instance's attribute would hide a rewritten method of its class
                self.problems.add(
                    f"'{path}' ({type(module).__name__})",
                    f"sets its own {own[0]} per instance, and that code must change; give the "
                    "module a rule (convert(..., rules={TheModule: rule}))",
                )
                continue
            replaced = install_methods(module, graphs)
            if replaced:
                self.result.rewritten[path] = replaced
        self.result.leaves = list(self._leaves(""))
        self._note_uncalled()

    def _inside_closed(self, path: str) -> bool:
        return any(path.startswith(f"{c}.") or not c for c in self.closed if c != path)

    def _push(self, path: str) -> None:
        if path not in self._seen:
            self._seen.add(path)
            depth = path.count(".") + 1 if path else 0
            heapq.heappush(self._queue, (depth, len(self._seen), path))

    def _module(self, path: str) -> nn.Module:
        return self.network.get_submodule(path) if path else self.network

    def _visit(self, path: str) -> None:
        module = self._module(path)
        label = f"'{path}' ({type(module).__name__})"
        info = self.calls.get(path)
        if id(module) in self.done:  # the same module at a second path
            self._set(path, self.done[id(module)][1])
            self.closed.add(path)
            return
        if path and (info is None or not info.signal):
            self.closed.add(path)  # only computes constants: keeps its function
            self.result.notes.append(
                f"{label} kept as it is: it only computes constants (off the explained path)"
            )
            return
        rule = self.overrides.get(path) or self.table.get(type(module))
        if rule is None and (
            getattr(type(module), "_bcosify_converted", False)
            or isinstance(module, ExplanationAware)
        ):
            rule = keep  # B-cos already: converted before, or made explanation-aware by hand
        if rule is not None and path:
            self.closed.add(path)
            self._apply(path, module, rule)
            return
        if is_torch_builtin(module):
            self.closed.add(path)
            self.problems.add(label, "no conversion rule for this module type")
            return
        self._trace(path, module, info)

    def _apply(self, path: str, module: nn.Module, rule: Rule) -> None:
        old = type(module)
        try:
            new = self._convert(module, path, rule)
        except UnsupportedModule as error:
            self.problems.add(f"'{path}' ({old.__name__})", str(error))
            return
        entry = (path, old.__name__, type(new).__name__)
        self.done[id(module)] = (module, new)
        # a module shared between parents (CoaT's position encodings): met again at another
        # path, through a parent traced twice, the replacement is already converted
        self.done[id(new)] = (new, new)
        if new is module and type(new) is old:
            self.result.kept.append(entry)
            return
        self.result.replaced.append(entry)
        self._set(path, new)

    def _convert(self, module: nn.Module, path: str, rule: Rule | None = None) -> nn.Module:
        """The module's replacement by its rule (the path's override, else its type's)."""
        rule = rule or self.overrides.get(path) or self.table.get(type(module))
        if rule is None:
            raise UnsupportedModule("no conversion rule for this module type")
        context = RuleContext(
            self.options, path, lambda child, name: self._convert(child, f"{path}.{name}")
        )
        return rule(module, context)

    def _set(self, path: str, module: nn.Module) -> None:
        owner, _, name = path.rpartition(".")
        setattr(self._module(owner), name, module)

    def _trace(self, path: str, module: nn.Module, info: CallInfo | None) -> None:
        graphs = []
        for method, fixed in self.methods(module, path):
            call = info if info is not None else root_call(module, method)
            for variant in call.variants():
                try:
                    concrete = {**variant, **fixed}
                    graphs.append(
                        trace_method(module, path, method, concrete, call.signal, self.examples)
                    )
                except TraceFailure as error:
                    where = f"'{path}' ({type(module).__name__})" if path else "the model"
                    self.problems.add(
                        where, f"torch.fx could not trace {method}: {error}. {_TRACE_HINT}"
                    )
                    self.closed.add(path)
                    return
        for graph in graphs:
            self.result.notes += rewrite_parameter_products(graph)
            self.result.notes += rewrite_functional_linear(graph, self.options.keep_bias)
            rewrites = check_and_rewrite(graph, self.options, self.problems, self._is_activation)
            self.result.notes += _unique(rewrites.notes, self.result.notes)
            self.result.constants += _unique(rewrites.constants, self.result.constants)
            for projection in rewrites.qkv_projections:
                self.overrides[graph.full_path(projection)] = qkv_projection
        if self.head_owner == path:
            self._move_head(graphs)
        for graph in graphs:
            self._record_calls(graph)
        self.graphs[path] = graphs

    def _is_activation(self, module: nn.Module) -> bool:
        """An activation of the rule table, or a module without a rule that computes a gate
        (its output a sigmoid's or softmax's): where it multiplies the signal, it is a gate."""
        rule = self.table.get(type(module))
        if rule is not None or is_torch_builtin(module):
            return bool(getattr(rule, "activation", False))
        if module not in self._gate_modules:
            try:
                traced = trace_method(module, "", "forward", {}, set())
            except TraceFailure:
                self._gate_modules[module] = False
            else:
                self._gate_modules[module] = ends_in_bounded_gate(traced)
        return self._gate_modules[module]

    def _move_head(self, graphs: list[ModuleGraph]) -> None:
        """Search the head in the graphs of the module (the last one first: timm's
        ``forward_head`` without ``pre_logits``); move it in the one that has it."""
        self.head_owner = None
        if not self.options.classifier_before_pool:
            return
        notes = []
        for graph in reversed(graphs):
            found = move_classifier_before_pool(
                graph, self._inspect, lambda m, p: self._convert(m, p), self._set
            )
            if isinstance(found, ContinueIn):
                self.head_owner = found.path
                return
            if found.startswith("classifier '"):
                self.result.notes.append(found)
                return
            notes.append(found)
        self.result.notes.append(notes[0])

    def _inspect(self, graph: ModuleGraph, node: fx.Node) -> ModuleGraph | None:
        try:
            return trace_call(graph, node)
        except TraceFailure:
            return None

    def _record_calls(self, graph: ModuleGraph) -> None:
        signal = signal_nodes(graph)
        for node in graph.calls():
            target = str(node.target)
            child = graph.submodule(target)
            path = graph.full_path(target)
            if isinstance(child, ConstantTerms):
                continue
            gate = node.name in graph.gates  # a gate keeps its function: not on the path
            self.calls.setdefault(path, CallInfo()).add(
                method_function(child, "forward"), node.args, node.kwargs, set() if gate else signal
            )
            self._push(path)

    def _leaves(self, path: str) -> Iterator[str]:
        for graph in self.graphs.get(path, ()):
            for node in graph.calls():
                full = graph.full_path(str(node.target))
                if full in self.graphs:
                    yield from self._leaves(full)
                else:
                    yield full

    def _note_training_dependence(
        self, path: str, module: nn.Module, graphs: list[ModuleGraph]
    ) -> None:
        """Name the modules to be rewritten whose own code differs in training mode: the
        rewritten code is traced in evaluation mode."""
        was = module.training
        for graph in graphs:
            if not graph.changed:
                continue
            try:
                traces = []
                for mode in (False, True):
                    module.training = mode
                    traces.append(trace_method(module, path, graph.method, graph.concrete, set()))
            except TraceFailure:
                continue
            finally:
                module.training = was
            if _operations(traces[0]) != _operations(traces[1]):
                self.result.notes.append(
                    f"'{path}' ({type(module).__name__}).{graph.method} runs differently in "
                    "training mode (dropout or stochastic depth in its own code); its "
                    "rewritten code is the evaluation-mode one"
                )
                return

    def _note_uncalled(self) -> None:
        read = {  # modules whose parameters the code reads directly (an embedding table)
            graph.full_path(str(n.target)).rpartition(".")[0]
            for graphs in self.graphs.values()
            for graph in graphs
            for n in graph.graph.nodes
            if n.op == "get_attr"
        }
        reached = set(self.graphs) | set(self.calls) | read
        uncalled = [
            path
            for path, module in self.network.named_modules()
            if path
            and not any(path == r or path.startswith(f"{r}.") for r in reached if r)
            and any(True for _ in module.parameters(recurse=False))
        ]
        if uncalled:
            shown = ", ".join(f"'{p}'" for p in uncalled[:8])
            more = f" and {len(uncalled) - 8} more" if len(uncalled) > 8 else ""
            self.result.notes.append(f"not called by the forward, left unconverted: {shown}{more}")


def _unique(lines: list[str], seen: list[str]) -> list[str]:
    """The lines not yet in ``seen`` (a method traced twice reports a rewrite once)."""
    return [line for line in dict.fromkeys(lines) if line not in seen]


def _operations(graph: ModuleGraph) -> list[tuple[str, str, str]]:
    """The graph's operations, to compare two traces of one method."""
    return [(n.op, str(n.target), str(n.args)) for n in graph.graph.nodes]
