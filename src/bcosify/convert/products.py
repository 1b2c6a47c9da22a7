"""Products of the signal with a parameter matrix (``x @ proj``) become linear layers.

Some models apply a linear map as a bare matrix product with a parameter rather than through
an ``nn.Linear`` (open_clip's image towers end in ``pooled @ self.proj``). Such a product is a
linear layer, and in a B-cos network every linear layer is a B-cos layer; written as a product
it would escape the rule table. This pass rewrites it into a call of an ``nn.Linear`` that
carries the parameter (transposed) under the parameter's own name, so that the rule table
converts it like any other linear layer.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .graph import signal_nodes
from .tracing import ModuleGraph

__all__ = ["rewrite_parameter_products"]

_MATMULS = {operator.matmul, torch.matmul}


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
