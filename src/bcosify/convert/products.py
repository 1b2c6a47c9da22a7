"""Linear maps written as operations on parameters become calls of linear layers.

Some models apply a linear map as a bare matrix product with a parameter rather than through
an ``nn.Linear`` (open_clip's image towers end in ``pooled @ self.proj``), or call
``F.linear`` with a linear layer's own weight and a bias they assemble themselves (timm's EVA
attention: ``F.linear(x, self.qkv.weight, cat(q_bias, k_bias, v_bias))``). Such an operation is
a linear layer, and in a B-cos network every linear layer is a B-cos layer; written out it would
escape the rule table. These passes rewrite it into a call of an ``nn.Linear``, so that the rule
table converts it like any other linear layer.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .graph import signal_nodes
from .tracing import ModuleGraph

__all__ = ["rewrite_functional_linear", "rewrite_parameter_products"]

_MATMULS = {operator.matmul, torch.matmul}
_LINEARS = {F.linear, torch._C._nn.linear}


def rewrite_parameter_products(graph: ModuleGraph) -> list[str]:
    """Rewrite every ``signal @ P`` (``P`` a 2-D parameter of the module) into an ``nn.Linear``
    call.

    A parameter is rewritten only when every use of it is such a product, so that no copy of
    it is left behind to drift apart in training; the linear layer takes its name. Returns a
    note per rewritten parameter.

    Example:
        >>> import torch
        >>> from bcosify.convert.tracing import trace_method
        >>> class Head(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = torch.nn.Parameter(torch.randn(4, 2))
        ...     def forward(self, x):
        ...         return x @ self.proj
        >>> head = Head()
        >>> rewrite_parameter_products(trace_method(head, "head", "forward", {}, {"x"}))
        ["'head.proj' (a parameter applied as x @ proj) -> linear layer 'head.proj' (4 -> 2)"]
        >>> type(head.proj).__name__, tuple(head.proj.weight.shape)
        ('Linear', (2, 4))
    """
    signal = signal_nodes(graph)
    reads: dict[str, list[fx.Node]] = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            reads.setdefault(str(node.target), []).append(node)
    notes = []
    for target, nodes in reads.items():
        parameter = _parameter(graph, target)
        users = list(dict.fromkeys(user for node in nodes for user in node.users))
        if parameter is None or not users:
            continue
        if not all(_is_product_with(user, target, signal) for user in users):
            continue
        notes.append(_rewrite(graph, target, parameter, users))
        for node in nodes:
            graph.graph.erase_node(node)
    return notes


def _parameter(graph: ModuleGraph, target: str) -> nn.Parameter | None:
    owner_path, _, name = target.rpartition(".")
    owner = graph.submodule(owner_path) if owner_path else graph.module
    value = owner._parameters.get(name)
    return value if value is not None and value.ndim == 2 else None


def _is_product_with(node: fx.Node, target: str, signal: set[fx.Node]) -> bool:
    is_matmul = (node.op == "call_function" and node.target in _MATMULS) or (
        node.op == "call_method" and node.target == "matmul"
    )
    if not is_matmul or len(node.args) != 2 or node.kwargs:
        return False
    left, right = node.args
    return (
        left in signal
        and isinstance(right, fx.Node)
        and right.op == "get_attr"
        and str(right.target) == target
    )


def _rewrite(graph: ModuleGraph, target: str, parameter: nn.Parameter, users: list[fx.Node]) -> str:
    features_in, features_out = parameter.shape
    linear = nn.Linear(
        features_in, features_out, bias=False, device=parameter.device, dtype=parameter.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(parameter.t())
    graph.set_submodule(target, linear)
    for user in users:
        with graph.graph.inserting_before(user):
            call = graph.graph.call_module(target, (user.args[0],))
        call.meta = dict(user.meta)
        user.replace_all_uses_with(call)
        graph.graph.erase_node(user)
    graph.changed = True
    name = target.rpartition(".")[2]
    path = graph.full_path(target)
    return (
        f"'{path}' (a parameter applied as x @ {name}) -> linear layer '{path}' "
        f"({features_in} -> {features_out})"
    )


def rewrite_functional_linear(graph: ModuleGraph, keep_bias: bool) -> list[str]:
    """Rewrite ``F.linear(signal, L.weight, bias)``, ``L`` a linear submodule, into ``L(signal)``.

    The bias, often assembled from parameters in the code, is dropped (a B-cos network has
    none); with ``keep_bias`` (equivalence checks) its value becomes ``L``'s bias. Parameters
    and buffers of the module that only fed the bias are then set to None. Returns a note per
    rewrite.

    Example:
        >>> import torch
        >>> from bcosify.convert.tracing import trace_method
        >>> class Attention(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.qkv = torch.nn.Linear(4, 12, bias=False)
        ...         self.q_bias = torch.nn.Parameter(torch.zeros(4))
        ...         self.register_buffer("k_bias", torch.zeros(4))
        ...         self.v_bias = torch.nn.Parameter(torch.zeros(4))
        ...     def forward(self, x):
        ...         bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        ...         return torch.nn.functional.linear(x, self.qkv.weight, bias)
        >>> attention = Attention()
        >>> rewrite_functional_linear(trace_method(attention, "attn", "forward", {}, {"x"}), False)
        ["'attn': F.linear with the weight of 'attn.qkv' -> a call of it (bias dropped)"]
        >>> attention.q_bias is None, attention.k_bias is None
        (True, True)
    """
    signal = signal_nodes(graph)
    notes = []
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in _LINEARS:
            continue
        args = dict(zip(("input", "weight", "bias"), node.args, strict=False)) | node.kwargs
        x, weight, bias = args.get("input"), args.get("weight"), args.get("bias")
        if x not in signal or not isinstance(weight, fx.Node) or weight.op != "get_attr":
            continue
        owner, _, name = str(weight.target).rpartition(".")
        layer = graph.submodule(owner) if owner and name == "weight" else None
        computed = isinstance(bias, fx.Node)
        if type(layer) is not nn.Linear or (computed and _ancestors(bias) & signal):
            continue
        if computed and any(n.op == "placeholder" for n in _ancestors(bias) | {bias}):
            continue  # a bias passed in: not a constant of the module
        sources = _sources(bias)
        if keep_bias and bias is not None:
            value = _evaluate(graph, bias) if computed else bias
            layer.bias = nn.Parameter(torch.as_tensor(value).detach().clone())
        elif layer.bias is not None:
            layer.register_parameter("bias", None)
        with graph.graph.inserting_before(node):
            call = graph.graph.call_module(owner, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        inputs = _ancestors(node)
        graph.graph.erase_node(node)
        for unused in reversed([n for n in graph.graph.nodes if n in inputs]):
            if not unused.users and unused.op in ("get_attr", "call_function", "call_method"):
                graph.graph.erase_node(unused)  # the weight and bias computation, now dead
        graph.changed = True
        if not keep_bias:  # what only fed the bias is gone: no bias left in the module
            used = {str(n.target) for n in graph.graph.nodes if n.op == "get_attr"}
            for target in sources - used:
                _remove(graph.module, target)
        kept = "bias kept" if keep_bias and bias is not None else "bias dropped"
        notes.append(
            f"'{graph.path}': F.linear with the weight of '{graph.full_path(owner)}' -> a call "
            f"of it ({kept})"
        )
    return notes


def _remove(module: nn.Module, name: str) -> None:
    """Set the module's own parameter or buffer ``name`` to None (the attribute stays)."""
    if name in module._parameters:
        module.register_parameter(name, None)
    elif name in module._buffers:
        module.register_buffer(name, None)


def _sources(value: object) -> set[str]:
    """The attributes (``get_attr`` targets) a graph value is computed from."""
    found: set[str] = set()
    pending = [value] if isinstance(value, fx.Node) else []
    while pending:
        node = pending.pop()
        if node.op == "get_attr":
            found.add(str(node.target))
        pending += node.all_input_nodes
    return found


def _evaluate(graph: ModuleGraph, value: fx.Node) -> torch.Tensor:
    """The value of a node computed from the module's attributes only."""
    partial, copies = fx.Graph(), {}
    for node in graph.graph.nodes:
        if node is value or node in _ancestors(value):
            copies[node] = partial.node_copy(node, lambda n: copies[n])
    partial.output(copies[value])
    with torch.no_grad():
        return fx.GraphModule(graph.module, partial)()


def _ancestors(node: fx.Node) -> set[fx.Node]:
    found: set[fx.Node] = set()
    pending = list(node.all_input_nodes)
    while pending:
        current = pending.pop()
        if current not in found:
            found.add(current)
            pending += current.all_input_nodes
    return found
