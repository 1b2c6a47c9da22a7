"""Checking and rewriting the operations in one module's own code.

Each module that has no rule is traced on its own, its submodules as leaves
(:mod:`bcosify.convert.tracing`), and its graph is checked operation by operation: structural
and linear operations pass, functional activations and ``F.scaled_dot_product_attention`` are
rewritten to calls of their dynamic-linear modules, parameters and buffers added to or
concatenated with the token sequence (positional embeddings, class and register tokens) are
routed through :class:`~bcosify.nn.ConstantTerms` so that explanations report them by name, a
product of two input-dependent tensors detaches one factor when explaining (a gate, attention
weights, a norm's scale: :func:`check_and_rewrite` says which), and everything else (a
functional sigmoid on the signal, a square, a bias added to the signal) is reported with the
path of the module whose ``forward`` does it. Computations that do not depend on the signal
(shape arithmetic, a position bias computed from a table, an attention mask) are not on the
explained path and are left alone.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import (
    BcosGELU,
    BcosHardswish,
    BcosMish,
    BcosNormalize,
    BcosReLU6,
    BcosSiLU,
    ConstantTerms,
    DetachedFactor,
    DynamicAttention,
    GatedActivation,
)
from .options import ConversionOptions
from .tracing import ModuleGraph, has_plain_example_value

__all__ = [
    "GraphProblems",
    "GraphRewrites",
    "check_and_rewrite",
    "ends_in_bounded_gate",
    "is_linear_pad",
    "is_static",
    "is_structural",
    "signal_nodes",
]


@dataclass
class GraphProblems:
    """Everything in a graph that has no dynamic-linear form, one line per place."""

    lines: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"  - {where}: {what}")


# Operations that only move, select, combine or average values: linear (or a selection).
_STRUCTURAL_FUNCTIONS: set[object] = {
    getattr,
    operator.getitem,
    operator.eq,
    operator.ne,
    operator.neg,
    torch.flatten,
    torch.permute,
    torch.transpose,
    torch.reshape,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.chunk,
    torch.split,
    torch.squeeze,
    torch.unsqueeze,
    torch.unflatten,
    torch.movedim,
    torch.roll,
    torch.mean,
    torch.sum,
    torch.amax,
    torch.neg,
    torch._assert,
    F.relu,
    torch.relu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
    F.unfold,
    F.fold,  # sums the overlapping patches unfold made: a fixed sum of the input's values
    F.interpolate,  # resampling: a fixed weighted sum of the input's values
    torch.tile,
    torch.repeat_interleave,
    torch.unbind,
}
_STRUCTURAL_METHODS = {
    "flatten",
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "permute",
    "transpose",
    "contiguous",
    "size",
    "dim",
    "expand",
    "expand_as",
    "unbind",
    "chunk",
    "split",
    "squeeze",
    "unsqueeze",
    "unflatten",
    "unfold",
    "movedim",
    "roll",
    "mean",
    "sum",
    "amax",
    "relu",
    "neg",
    "clone",
    "to",
    "type_as",
    "float",
    "repeat",  # copies: each output value is one input value
    "tile",
    "repeat_interleave",
    "max",  # of one tensor: the largest values (a selection, as amax) and their indices
    "append",  # a list the module was passed, grown (VoVNet's feature list)
    "extend",
}
_STATIC_METHODS = {"size", "dim"}  # results are shapes and types, not signals
_STATIC_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
# methods whose second operand only lends its shape or dtype: the result carries the first's data
_SHAPE_ONLY_METHODS = {"expand_as", "view_as", "reshape_as", "type_as"}
_ADDITIONS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_CONCATENATIONS = {torch.cat, torch.concat, torch.stack}
_PRODUCTS = {
    operator.mul,
    operator.imul,
    torch.mul,
    operator.truediv,
    operator.itruediv,
    torch.div,
    operator.matmul,
    torch.matmul,
    torch.bmm,
    torch.einsum,  # linear in each operand: a product of the signal with constants
}
_PRODUCT_METHODS = {"mul", "mul_", "div", "div_", "matmul", "bmm"}
_DIVISIONS = {"truediv", "itruediv", "div", "div_"}  # names of the functions and methods
_SOFTMAXES = {F.softmax, torch.softmax, "softmax"}
_ATTENTION_HINT = (
    "attention computed explicitly (softmax of q k^T) is not recognised: compute it with "
    "F.scaled_dot_product_attention (timm modules: fused_attn=True), or give the module a rule"
)
_FUNCTIONAL_ACTIVATIONS: dict[object, Callable[[fx.Node], nn.Module]] = {
    F.gelu: lambda n: BcosGELU(n.kwargs.get("approximate", "none")),
    F.silu: lambda n: BcosSiLU(),
    F.hardswish: lambda n: BcosHardswish(),
    F.mish: lambda n: BcosMish(),
    F.relu6: lambda n: BcosReLU6(),
}
# F.gelu is a builtin of torch._C._nn, and traces as that builtin
_FUNCTIONAL_ACTIVATIONS[torch._C._nn.gelu] = _FUNCTIONAL_ACTIVATIONS[F.gelu]
try:
    from torchvision.models.swin_transformer import _patch_merging_pad
    from torchvision.ops import stochastic_depth

    _STRUCTURAL_FUNCTIONS.update((stochastic_depth, _patch_merging_pad))
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass


@dataclass
class GraphRewrites:
    """What :func:`check_and_rewrite` found and changed in one module's graph.

    Attributes:
        notes: one line per rewrite, for the conversion report.
        constants: one line per constant routed through :class:`~bcosify.nn.ConstantTerms`,
            starting with the name explanations report it under (relative to the network).
        qkv_projections: paths (relative to the module) of the linear layers that compute
            queries, keys or values of an attention (converted as the ``qkv_projection`` option
            says).
    """

    notes: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    qkv_projections: set[str] = field(default_factory=set)


def check_and_rewrite(
    graph: ModuleGraph,
    options: ConversionOptions,
    problems: GraphProblems,
    is_activation: Callable[[nn.Module], bool] = lambda module: False,
) -> GraphRewrites:
    """Check every operation of one module's own code; rewrite functional activations,
    attention, gated products and constants in it.

    Calls of submodules are not checked here: the converter looks at each submodule on its
    own. A product of two input-dependent tensors one of which is an activation's output (the
    ``x_a * act(x_b)`` of SwiGLU, GEGLU and sigmoid gates; ``is_activation`` says which modules
    are activations) is a gated product: the gate is detached in explanation mode
    (:class:`~bcosify.nn.DetachedFactor`) and its activation left as it is (``graph.gates``).
    Any other product of two input-dependent factors detaches one of them, chosen as
    :func:`_detached_factors` says (attention weights, a norm's scale, a divisor, ...), and
    the operations that only compute it are off the explained path. Adds a line to
    ``problems`` for everything that cannot be converted.

    Example:
        >>> import torch
        >>> from bcosify.convert.options import ConversionOptions
        >>> from bcosify.convert.tracing import trace_method
        >>> class Block(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.nn.functional.gelu(x) + torch.tanh(x)
        >>> graph = trace_method(Block(), "block", "forward", {}, {"x"})
        >>> problems = GraphProblems()
        >>> rewrites = check_and_rewrite(graph, ConversionOptions((0.5,), (0.5,)), problems)
        >>> rewrites.notes
        ["'block' (Block): functional gelu -> module 'bcos_act_0' (BcosGELU)"]
        >>> problems.lines
        ["  - 'block' (Block): calls tanh, which has no dynamic-linear form"]
    """
    rewrites = GraphRewrites()
    computed = signal_nodes(graph)  # what depends on the input, before any rewrite
    gates = _gates(graph, computed, is_activation)
    factors, only = _detached_factors(graph, computed, gates)
    rewritten: dict[fx.Node, fx.Node] = {}  # a node replaced by a module's call: by that call
    signal: set[fx.Node] = set()
    for node in list(graph.graph.nodes):
        depends = any(arg in signal for arg in _data_inputs(node))
        if node.op == "placeholder":
            if node.target in graph.signal_inputs:
                signal.add(node)
            continue
        if node in only:
            # computes a detached factor only (q k^T, its bias, softmax; a norm's scale): off
            # the explained path; its modules keep their function
            if node.op == "call_module":
                graph.gates.add(node.name)
            signal.add(node)  # it depends on the signal: the weights it computes are gates
            continue
        if not depends or is_static(node):
            # a constant of the network (shape arithmetic, a position bias computed from a
            # table): not on the explained path; where it joins the signal is checked there
            continue
        gate = next((a for a in node.all_input_nodes if a in gates), None)
        if node in gates:
            graph.gates.add(node.name)  # left as it is: the product detaches it
        elif gate is not None:
            _detach_gate(graph, node, gate, rewrites)
        elif node in factors:
            factor, why = factors[node]
            _detach_factor(graph, node, rewritten.get(factor, factor), why, rewrites)
        elif node.op in ("get_attr", "output"):
            pass
        elif node.op == "call_module":  # converted on its own; constants passed with the signal
            problem = _route_constants(graph, node, signal, rewrites)
            if problem:
                problems.add(graph.label, problem)
        elif node.op == "call_function" and node.target in _FUNCTIONAL_ACTIVATIONS:
            rewritten[node] = _rewrite_activation(graph, node, options, rewrites)
            node = rewritten[node]
        elif node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            rewritten[node] = _rewrite_attention(graph, node, rewrites)
            node = rewritten[node]
        elif node.op == "call_function" and node.target is F.normalize:
            rewritten[node] = _rewrite_normalize(graph, node, rewrites)
            node = rewritten[node]
        else:
            problem = _route_constants(graph, node, signal, rewrites) or _check_operation(
                node, signal
            )
            if problem:
                problems.add(graph.label, problem)
        signal.add(node)
    return rewrites


_GATE_FUNCTIONS = {
    F.silu,
    F.gelu,
    torch._C._nn.gelu,
    torch.sigmoid,
    F.sigmoid,
    torch.tanh,
    F.tanh,
    F.relu,
    torch.relu,
    F.hardsigmoid,
    F.hardswish,
    F.mish,
    F.softplus,
    F.relu6,
}
_GATE_METHODS = {"sigmoid", "tanh", "relu"}
_GATE_MODULES = (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softplus, GatedActivation)
_ELEMENTWISE_PRODUCTS = {operator.mul, operator.imul, torch.mul}


def _gates(
    graph: ModuleGraph, signal: set[fx.Node], is_activation: Callable[[nn.Module], bool]
) -> set[fx.Node]:
    """The activations whose every use is an elementwise product with another signal, directly
    or through reshapes (ResNeSt's ``x * attn.reshape(...)``): the activation, the reshapes and
    the last of them, which the product detaches."""
    found = set()
    for node in graph.graph.nodes:
        if node not in signal or not node.users:
            continue
        chain = [node]
        while len(chain[-1].users) == 1 and _reshapes(next(iter(chain[-1].users))):
            chain.append(next(iter(chain[-1].users)))
        if not all(_gates_product(user, chain[-1], signal) for user in chain[-1].users):
            continue
        # asked last: whether a module without a rule computes a gate takes tracing it
        if node.op == "call_module":
            module = graph.submodule(str(node.target))
            activation = isinstance(module, _GATE_MODULES) or is_activation(module)
        elif node.op == "call_function":
            activation = node.target in _GATE_FUNCTIONS
        else:
            activation = node.op == "call_method" and node.target in _GATE_METHODS
        if activation:
            found.update(chain)
    return found


def _reshapes(node: fx.Node) -> bool:
    """A structural operation of one tensor's values (a view, a transpose), its other inputs
    shapes (:func:`_from_shapes`)."""
    return is_structural(node) and len([a for a in _data_inputs(node) if not _from_shapes(a)]) == 1


def ends_in_bounded_gate(graph: ModuleGraph) -> bool:
    """Whether a traced module's output is a sigmoid's or softmax's, through reshapes: the
    module computes a gate (SKNet's and ResNeSt's split attention), which keeps its function
    where it multiplies the signal and is detached there when explaining.

    Example:
        >>> import torch
        >>> from bcosify.convert.tracing import trace_method
        >>> class Attention(torch.nn.Module):
        ...     def forward(self, x):
        ...         return torch.softmax(x.mean((2, 3)), dim=1).view(x.shape[0], -1, 1, 1)
        >>> ends_in_bounded_gate(trace_method(Attention(), "attn", "forward", {}, {"x"}))
        True
    """
    (value,) = (n.args[0] for n in graph.graph.nodes if n.op == "output")
    while isinstance(value, fx.Node) and _reshapes(value):
        value = next(a for a in _data_inputs(value) if not _from_shapes(a))
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_module":
        return isinstance(graph.submodule(str(value.target)), _BOUNDED_GATE_MODULES)
    return value.op in ("call_function", "call_method") and value.target in _BOUNDED_GATES


_BOUNDED_GATES: set[object] = {torch.sigmoid, F.sigmoid, F.hardsigmoid, "sigmoid", *_SOFTMAXES}
_BOUNDED_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)


_MATMULS = {operator.matmul, torch.matmul, torch.bmm}


def _is_matmul(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _MATMULS) or (
        node.op == "call_method" and node.target in ("matmul", "bmm")
    )


def _is_softmax(graph: ModuleGraph, node: fx.Node) -> bool:
    return (
        (node.op == "call_function" and node.target in _SOFTMAXES)
        or (node.op == "call_method" and node.target == "softmax")
        or (node.op == "call_module" and isinstance(graph.submodule(str(node.target)), nn.Softmax))
    )


def _from_softmax(graph: ModuleGraph, value: object) -> bool:
    """Whether ``value`` is computed from a softmax's output alone, through reshapes and
    modules of it only (dropout, CaiT's and EfficientFormer's talking-heads mixing)."""
    while isinstance(value, fx.Node) and not _is_softmax(graph, value):
        inputs = [a for a in _data_inputs(value) if not is_static(a)]
        if not (value.op == "call_module" or is_structural(value)) or len(inputs) != 1:
            return False
        value = inputs[0]
    return isinstance(value, fx.Node)


def _detached_factors(
    graph: ModuleGraph, signal: set[fx.Node], gates: set[fx.Node]
) -> tuple[dict[fx.Node, tuple[fx.Node, str]], set[fx.Node]]:
    """The products of two input-dependent tensors not gated by an activation, each with the
    factor it detaches when explaining (and why); and the nodes that only compute detached
    factors, which are off the explained path (``q k^T`` and its softmax, a norm's root mean
    square, a modulator's context).

    The factor detached is, in this order: the divisor of a division; an attention's weights
    (a softmax's output); the one factor computed through an operation that is not dynamic
    linear (a product of input-dependent tensors, a root, a power: a norm's scale, linear
    attention's ``q k^T``); else, in a matrix product, the left operand, the weights of the
    values on the right (CoaT's ``q @ (softmax(k)^T v)``), and in an elementwise one the one
    factor computed through a sum or mean (a global context, SwiftFormer's), else the right
    operand (``x * gate``). A tensor multiplied by itself (a square) is not a product of two
    factors and stays an error.
    """
    nonlinear: set[fx.Node] = set()  # not dynamic linear in the signal, as rewritten so far
    reduced: set[fx.Node] = set()  # computed through a sum or mean over some dimension
    found: dict[fx.Node, tuple[fx.Node, str]] = {}
    for node in graph.graph.nodes:
        if node not in signal:
            continue
        choice = _factor(graph, node, signal, gates, nonlinear, reduced)
        if choice is not None:
            found[node] = choice
        detached = {choice[0]} if choice else {a for a in node.all_input_nodes if a in gates}
        inputs = [a for a in _data_inputs(node) if a not in detached]
        if any(a in nonlinear for a in inputs) or (
            not detached and _is_nonlinear(graph, node, signal)
        ):
            nonlinear.add(node)
        if any(a in reduced for a in inputs) or _name(node) in _REDUCTIONS:
            reduced.add(node)
    only = _computing_only(graph, signal, {p: f for p, (f, _) in found.items()})
    return {p: f for p, f in found.items() if p not in only}, only


def _factor(
    graph: ModuleGraph,
    node: fx.Node,
    signal: set[fx.Node],
    gates: set[fx.Node],
    nonlinear: set[fx.Node],
    reduced: set[fx.Node],
) -> tuple[fx.Node, str] | None:
    """The factor a product of two input-dependent tensors detaches, and why (see
    :func:`_detached_factors`); None for any other node."""
    factors = [a for a in _product_operands(node) if a in signal]
    if len(factors) < 2 or any(a in gates for a in factors):
        divisor = node.args[1] if _divides_by(node, signal) else None
        if isinstance(divisor, fx.Node) and node.args[0] in signal - {divisor}:
            return divisor, "the divisor"
        return None
    if len(factors) != 2 or factors[0] is factors[1]:
        return None
    weights = [a for a in factors if _from_softmax(graph, a)]
    if len(weights) == 1:
        return weights[0], "the attention weights"
    scales = [a for a in factors if a in nonlinear]
    if len(scales) == 1:
        return scales[0], "computed through operations that are not dynamic linear"
    if _is_matmul(node) or node.target is torch.einsum:
        return factors[0], "the left operand: the weights of the values on the right"
    summaries = [a for a in factors if a in reduced]
    if len(summaries) == 1:
        return summaries[0], "a sum or mean over some dimension, broadcast over it"
    return factors[1], "the right operand"


_REDUCTIONS = {"mean", "sum", "amax"}  # names of the functions and methods


def _product_operands(node: fx.Node) -> list[object]:
    """The operands of an elementwise or matrix product (not of a division), else none."""
    products = (node.op == "call_function" and node.target in _PRODUCTS) or (
        node.op == "call_method" and node.target in _PRODUCT_METHODS
    )
    if not products or _name(node) in _DIVISIONS:
        return []
    operands = list(node.args[1:] if node.target is torch.einsum else node.args)
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):  # einsum(eq, [a, b])
        operands = list(operands[0])
    return operands


def _divides_by(node: fx.Node, signal: set[fx.Node]) -> bool:
    """Whether ``node`` divides by an input-dependent tensor."""
    division = node.op in ("call_function", "call_method") and _name(node) in _DIVISIONS
    return division and len(node.args) == 2 and node.args[1] in signal


def _is_nonlinear(graph: ModuleGraph, node: fx.Node, signal: set[fx.Node]) -> bool:
    """Whether the operation itself is not dynamic linear in the signal (its inputs aside):
    a product of input-dependent tensors, a division by one, a softmax or bounded gate, or
    any operation without a dynamic-linear form or rewrite."""
    if node.op == "call_module":
        return isinstance(graph.submodule(str(node.target)), (*_BOUNDED_GATE_MODULES, nn.Tanh))
    if node.op not in ("call_function", "call_method") or is_static(node):
        return False
    if len([a for a in _product_operands(node) if a in signal]) > 1 or _divides_by(node, signal):
        return True
    rewritten = node.target in _FUNCTIONAL_ACTIVATIONS or node.target in (
        F.scaled_dot_product_attention,
        F.normalize,
    )
    return not (rewritten or _is_addition(node) or is_structural(node) or _product_operands(node))


def _computing_only(
    graph: ModuleGraph, signal: set[fx.Node], detached: dict[fx.Node, fx.Node]
) -> set[fx.Node]:
    """The input-dependent nodes whose every use computes a factor that a product detaches
    (``detached``: product -> factor); an in-place ``x[i] = v`` counts as a use of ``x``
    (MViT adds its relative position bias to ``q k^T`` so)."""

    def uses(node: fx.Node) -> list[fx.Node]:
        if node.op == "call_function" and node.target is operator.setitem:
            return [a for a in node.args[:1] if isinstance(a, fx.Node)]
        return list(node.users)

    only = {n for n in signal if n.op not in ("placeholder", "output")}
    changed = True
    while changed:  # the largest such set: in-place writes make the uses circular
        changed = False
        for node in list(only):
            used = uses(node)
            if not used or not all(u in only or detached.get(u) is node for u in used):
                only.discard(node)
                changed = True
    return only


def _gates_product(user: fx.Node, gate: fx.Node, signal: set[fx.Node]) -> bool:
    is_product = (user.op == "call_function" and user.target in _ELEMENTWISE_PRODUCTS) or (
        user.op == "call_method" and user.target in ("mul", "mul_")
    )
    if not is_product or len(user.args) != 2 or user.kwargs:
        return False
    other = user.args[1] if user.args[0] is gate else user.args[0]
    return other is not gate and other in signal


def _detach_gate(
    graph: ModuleGraph, product: fx.Node, gate: fx.Node, rewrites: GraphRewrites
) -> None:
    _insert_detached(graph, product, gate, rewrites, f"gated product, gate {_label(gate)}")


def _detach_factor(
    graph: ModuleGraph, product: fx.Node, factor: fx.Node, why: str, rewrites: GraphRewrites
) -> None:
    kind = "gated product, gate" if why == "the attention weights" else "factor"
    what = f"{kind} {_label(factor)} ({why})"
    if kind == "factor":
        what = f"product of input-dependent tensors ({_name(product)}), {what}"
    _insert_detached(graph, product, factor, rewrites, what)


def _label(node: fx.Node) -> str:
    return f"'{node.target}'" if node.op == "call_module" else _name(node)


def _insert_detached(
    graph: ModuleGraph, product: fx.Node, factor: fx.Node, rewrites: GraphRewrites, what: str
) -> None:
    """Route ``factor`` into ``product`` through a new :class:`~bcosify.nn.DetachedFactor`."""
    name = graph.add_submodule("bcos_gate", DetachedFactor())
    with graph.graph.inserting_before(product):
        detached = graph.graph.call_module(name, (factor,))
    detached.meta = dict(factor.meta)
    product.replace_input_with(factor, detached)
    rewrites.notes.append(
        f"{graph.label}: {what} detached when explaining (module '{name}', DetachedFactor)"
    )


def signal_nodes(graph: ModuleGraph) -> set[fx.Node]:
    """The nodes whose values (not only shapes) depend on the signal inputs.

    Example:
        >>> import torch
        >>> from bcosify.convert.tracing import trace_method
        >>> class Net(torch.nn.Module):
        ...     def forward(self, x, mask):
        ...         return (x * 2).view(x.shape[0], -1) + mask
        >>> graph = trace_method(Net(), "", "forward", {}, {"x"})
        >>> sorted(n.name for n in signal_nodes(graph))
        ['add', 'mul', 'output', 'view', 'x']
    """
    signal: set[fx.Node] = set()
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if node.target in graph.signal_inputs:
                signal.add(node)
        elif not is_static(node) and any(arg in signal for arg in _data_inputs(node)):
            signal.add(node)
    return signal


def is_static(node: fx.Node) -> bool:
    """True for a node that reads a shape, size or type: its value is not a signal.

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(lambda x: x.view(x.shape[0], -1)).graph
        >>> [n.name for n in graph.nodes if is_static(n)]
        ['getattr_1']
    """
    if has_plain_example_value(node):  # a size passed along with the signal (Twins)
        return True
    if node.op == "call_method":
        return node.target in _STATIC_METHODS
    if node.op != "call_function":
        return False
    # len(x): the first dimension (a shape-branch guard's, or the code's own)
    return node.target is len or (node.target is getattr and node.args[1] in _STATIC_ATTRIBUTES)


def _data_inputs(node: fx.Node) -> list[fx.Node]:
    """The inputs whose values (not only shapes) flow into ``node``'s result."""
    if node.op == "call_method" and node.target in _SHAPE_ONLY_METHODS:
        return [arg for arg in node.args[:1] if isinstance(arg, fx.Node)]
    return node.all_input_nodes


def is_structural(node: fx.Node) -> bool:
    """True for an operation that only moves, selects, combines or averages values.

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(lambda x: torch.sigmoid(x.flatten(1))).graph
        >>> [n.name for n in graph.nodes if is_structural(n)]
        ['flatten']
    """
    if node.op == "call_function" and node.target is operator.setitem:
        # a computed value stored in a list or a tensor (a constant stored would be an offset)
        return len(node.args) == 3 and (isinstance(node.args[2], fx.Node) or node.args[2] == 0)
    if node.op == "call_method" and node.target == "max":
        # x.max(other): the larger of two tensors, a constant where the other one is
        return not any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values()))
    return (
        (node.op == "call_method" and node.target in _STRUCTURAL_METHODS)
        or (node.op == "call_function" and node.target in _STRUCTURAL_FUNCTIONS)
        or is_linear_pad(node)
    )


def is_linear_pad(node: fx.Node) -> bool:
    """True for ``F.pad`` that adds zeros or repeats values (any mode but a nonzero constant):
    a selection, padded with zeros (Swin's patch merging, timm's 'same' padding of pools).

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(lambda x: torch.nn.functional.pad(x, (1, 1))).graph
        >>> [is_linear_pad(n) for n in graph.nodes]
        [False, True, False]
    """
    if node.op != "call_function" or node.target is not F.pad:
        return False
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    return mode != "constant" or value is None or value == 0


def _name(node: fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _is_addition(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDITIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )


def _check_operation(node: fx.Node, signal: set[fx.Node]) -> str | None:
    name = _name(node)
    if _is_addition(node) or is_structural(node):
        return None
    if _divides_by(node, signal):  # a signal divided by one is a detached factor's product
        return (
            f"divides a constant by an input-dependent tensor ({name}), which has no "
            "dynamic-linear form. Give the module a rule"
        )
    if name in _DIVISIONS:
        return None
    if _product_operands(node):
        if len([a for a in _product_operands(node) if a in signal]) > 1:
            # two factors are a detached factor's product (_detached_factors): not these
            return (
                f"multiplies input-dependent tensors ({name}) that are not two factors (a "
                "tensor by itself, or three at once), which has no dynamic-linear form. Give "
                "the module a rule"
            )
        return None
    if node.target in _SOFTMAXES:
        return f"calls softmax: {_ATTENTION_HINT}"
    return f"calls {name}, which has no dynamic-linear form"


def _is_zero(value: object) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _route_constants(
    graph: ModuleGraph, node: fx.Node, signal: set[fx.Node], rewrites: GraphRewrites
) -> str | None:
    """Route the constants added to or concatenated with the signal through ConstantTerms.

    Allowed are parameters and buffers (possibly expanded or reshaped): concatenated with the
    signal (class, distillation and register tokens), or added to it when they vary along more
    than one dimension (positional embeddings). A tensor with one value per channel is a bias
    and stays an error, and so does a number or a computed tensor. Returns the problem, if any.
    """
    if _is_addition(node):
        operands = [*node.args, *(v for k, v in node.kwargs.items() if k != "alpha")]
        if any(isinstance(a, (list, tuple)) for a in operands):
            return None  # ``[x2, x1] + children``: lists joined, not tensors added (DLA)
        constants = [a for a in operands if a not in signal and not _is_zero(a)]
        like = next((a for a in operands if a in signal), None)
        verb = "adds a constant to the signal"
    elif node.op == "call_function" and node.target in _CONCATENATIONS:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        if isinstance(tensors, fx.Node):  # a list the module was passed (DenseNet's features)
            tensors = [tensors]
        constants = [a for a in tensors if a not in signal]
        like = None
        verb = "concatenates a constant with the signal"
    elif node.op == "call_module":
        # a tuple of the signal and a constant (PiT passes its class token along with the
        # patches): inside, the submodule treats both as the signal, so the constant must
        # enter as a named constant term, as a concatenated class token does
        bundles = [a for a in node.args if isinstance(a, (tuple, list))]
        bundles = [b for b in bundles if any(x in signal for x in b)]
        constants = [x for b in bundles for x in b if isinstance(x, fx.Node) and x not in signal]
        like = None
        verb = "passes a constant together with the signal"
    else:
        return None
    sources = [_constant_sources(a) for a in constants]
    for source in sources:
        if not source:
            return (
                f"{verb} ({_name(node)}) that is not a parameter or buffer of the network; a "
                "B-cos network has no offsets. Remove it, or give the module a rule that "
                "reports it as a constant"
            )
        biases = [s for s in source if like is not None and not _varies_along_two_dims(graph, s)]
        if biases:
            return (
                f"{verb} ({_name(node)}): '{biases[0]}' has one value per channel, a bias; a "
                "B-cos network has no biases. Remove it (or fold it into the preceding layer)"
            )
    for operand, source in zip(constants, sources, strict=True):
        assert isinstance(operand, fx.Node)
        container = _constant_terms(graph)
        label = "+".join(source)
        with graph.graph.inserting_before(node):
            term = graph.graph.call_module(
                container, (label, operand, operand if like is None else like)
            )
        term.meta = dict(node.meta)
        node.replace_input_with(operand, term)
        graph.changed = True
        how = "added to" if like is not None else "concatenated with"
        if node.op == "call_module":
            how = "passed together with"
        name = "+".join(graph.full_path(s) for s in source)
        rewrites.constants.append(f"{name}: {how} the signal in {graph.label}")
    return None


def _constant_sources(value: object) -> list[str] | None:
    """The parameters, buffers and submodules whose outputs a constant is made of, if only
    reshaping, expanding or selecting them makes it; None (or empty) for anything else.

    A submodule called without the signal (a positional encoding computed from the input's
    shape: XCiT, EdgeNeXt) is named by its path, an argument by the module's path and its
    name; the caller only asks about values that do not depend on the signal."""
    if not isinstance(value, fx.Node):
        return None
    if value.op in ("get_attr", "call_module", "placeholder"):
        # a placeholder: an argument its callers pass off the explained path (CaiT's class
        # token into its first class-attention block, TNT's pixel position embedding)
        return [str(value.target)]
    if _from_shapes(value):
        return []
    if not (is_structural(value) or _is_addition(value)):  # a sum of constants is one too
        return None
    sources: list[str] = []
    for arg in _data_inputs(value):
        found = _constant_sources(arg)
        if found is None:
            return None
        sources += found
    return sources


def _from_shapes(node: fx.Node) -> bool:
    """A shape read, or arithmetic on shape reads only (``x.shape[-2] // 7``)."""
    if is_static(node):
        return True
    arithmetic = node.op == "call_function" and getattr(node.target, "__module__", "") in (
        "_operator",
        "operator",
    )
    return (
        arithmetic and bool(node.all_input_nodes) and all(map(_from_shapes, node.all_input_nodes))
    )


def _varies_along_two_dims(graph: ModuleGraph, target: str) -> bool:
    tensor = graph.attribute(target) if hasattr(graph.module, target.split(".")[0]) else None
    if not isinstance(tensor, torch.Tensor):  # a module's output, an argument: shape unknown
        return True
    return sum(size > 1 for size in tensor.shape) >= 2


def _constant_terms(graph: ModuleGraph) -> str:
    """The name of the module's ConstantTerms submodule, added on first use."""
    name = "constants"
    while hasattr(graph.module, name) and not isinstance(
        getattr(graph.module, name), ConstantTerms
    ):
        name = f"bcos_{name}"
    if not hasattr(graph.module, name):
        graph.module.add_module(name, ConstantTerms())
    return name


def _call_new_module(graph: ModuleGraph, node: fx.Node, prefix: str, module: nn.Module) -> fx.Node:
    """Replace ``node`` by a call of ``module`` (added as ``<prefix>_<i>``) on its arguments."""
    name = graph.add_submodule(prefix, module)
    with graph.graph.inserting_after(node):
        new = graph.graph.call_module(name, node.args, dict(node.kwargs))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.graph.erase_node(node)
    return new


def _rewrite_activation(
    graph: ModuleGraph, node: fx.Node, options: ConversionOptions, rewrites: GraphRewrites
) -> fx.Node:
    """Replace a functional activation by a call of its module; returns the new node."""
    replacement = (
        nn.Identity()
        if options.activations == "identity"
        else _FUNCTIONAL_ACTIVATIONS[node.target](node)
    )
    new = _call_new_module(graph, node, "bcos_act", replacement)
    new.args = new.args[:1]  # the activation modules take the tensor only
    new.kwargs = {}
    rewrites.notes.append(
        f"{graph.label}: functional {_name(node)} -> module '{new.target}' "
        f"({type(replacement).__name__})"
    )
    return new


def _rewrite_normalize(graph: ModuleGraph, node: fx.Node, rewrites: GraphRewrites) -> fx.Node:
    """Replace ``F.normalize`` by a :class:`~bcosify.nn.BcosNormalize` call (its norm detached
    when explaining); returns the new node."""
    names = ("input", "p", "dim", "eps")
    given = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
    options = {k: given[k] for k in ("p", "dim", "eps") if k in given}
    new = _call_new_module(graph, node, "bcos_normalize", BcosNormalize(**options))
    new.args, new.kwargs = (given["input"],), {}
    rewrites.notes.append(
        f"{graph.label}: functional normalize -> module '{new.target}' (BcosNormalize: the "
        "norm detached when explaining)"
    )
    return new


def _rewrite_attention(graph: ModuleGraph, node: fx.Node, rewrites: GraphRewrites) -> fx.Node:
    """Replace ``F.scaled_dot_product_attention`` by a :class:`DynamicAttention` call, and
    record the linear layers that compute its queries, keys and values."""
    new = _call_new_module(graph, node, "bcos_attention", DynamicAttention())
    operands = [*new.args[:3], *(new.kwargs.get(k) for k in ("query", "key", "value"))]
    found = {_projection(graph, operand) for operand in operands} - {None}
    rewrites.qkv_projections.update(found)
    computed = f", projections {sorted(found)}" if found else ""
    rewrites.notes.append(
        f"{graph.label}: functional scaled_dot_product_attention -> module '{new.target}' "
        f"(DynamicAttention: queries and keys detached when explaining{computed})"
    )
    return new


def _projection(graph: ModuleGraph, value: object) -> str | None:
    """The path of the ``nn.Linear`` that computes ``value``, looking back through reshapes,
    selections and modules without a weight matrix (norms, dropout); None if there is none."""
    while isinstance(value, fx.Node):
        if value.op == "call_module":
            module = graph.submodule(str(value.target))
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                return str(value.target) if type(module) is nn.Linear else None
        elif not is_structural(value):
            return None
        value = value.args[0] if value.args else None
    return None
