"""Tracing a model with torch.fx, and checking and rewriting its functional calls.

Modules with a rule are leaves of the trace; everything else is traced through, so a custom
block's ``forward`` is checked operation by operation: structural and linear operations pass,
functional activations are rewritten to their dynamic-linear modules, and everything else
(a functional sigmoid, a product of two input-dependent tensors, a constant added to the signal)
is reported with the path of the module whose ``forward`` does it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConversionError
from ..nn import BcosGELU, BcosHardswish, BcosMish, BcosReLU6, BcosSiLU
from .options import ConversionOptions

__all__ = ["GraphProblems", "check_and_rewrite", "move_classifier_before_pool", "trace"]


def trace(model: nn.Module, leaf_types: Iterable[type[nn.Module]]) -> fx.GraphModule:
    """Trace ``model`` with the rule-table types as leaves; a failure names the module."""
    tracer = _LeafTracer(tuple(leaf_types))
    try:
        graph = tracer.trace(model)
    except Exception as error:
        where = tracer.failed_in or "the model"
        raise ConversionError(
            f"torch.fx could not trace {where}: {type(error).__name__}: {error}\n"
            "Its forward probably branches on tensor values. Give that module a rule "
            "(convert(..., rules={TheModule: rule})) so that it is converted as a whole."
        ) from error
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type[nn.Module], ...]) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in self.leaf_types or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:  # the innermost module is the one to blame
                path = self.path_of_module(m)
                self.failed_in = f"'{path}' ({type(m).__name__})"
            raise


@dataclass
class GraphProblems:
    """Everything in a graph that has no dynamic-linear form, one line per place."""

    lines: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"  - {where}: {what}")


def where(node: fx.Node) -> str:
    """The path and type of the module whose forward created ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model's own forward"
    path, owner = list(stack.values())[-1]
    name = owner if isinstance(owner, str) else getattr(owner, "__name__", str(owner))
    return f"'{path}' ({name.rsplit('.', 1)[-1]})"


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
    torch.mean,
    torch.sum,
    torch.neg,
    torch._assert,
    F.relu,
    torch.relu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
}
_STRUCTURAL_METHODS = {
    "flatten",
    "view",
    "reshape",
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
    "mean",
    "sum",
    "relu",
    "neg",
    "clone",
    "to",
    "type_as",
    "float",
}
_STATIC_METHODS = {"size", "dim"}  # results are shapes and types, not signals
_STATIC_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}
_ADDITIONS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_PRODUCTS = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div}
_PRODUCT_METHODS = {"mul", "mul_", "div", "div_"}
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
    from torchvision.ops import stochastic_depth

    _STRUCTURAL_FUNCTIONS.add(stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass


def check_and_rewrite(
    gm: fx.GraphModule,
    options: ConversionOptions,
    has_rule: Callable[[nn.Module], bool],
    problems: GraphProblems,
) -> list[str]:
    """Check every node of ``gm``; rewrite functional activations in place.

    Returns one note per rewrite; adds a line to ``problems`` for everything that cannot be
    converted.
    """
    notes: list[str] = []
    signal: set[fx.Node] = set()  # nodes whose value depends on the input
    for node in list(gm.graph.nodes):
        depends = any(arg in signal for arg in node.all_input_nodes)
        if node.op == "placeholder":
            signal.add(node)
            continue
        if node.op in ("get_attr", "output"):
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if not has_rule(module):
                problems.add(
                    f"'{node.target}' ({type(module).__name__})",
                    "no conversion rule for this module type",
                )
        elif node.op == "call_function" and node.target in _FUNCTIONAL_ACTIVATIONS:
            node, note = _rewrite_activation(gm, node, options)
            notes.append(note)
        elif _is_static(node):
            continue
        else:
            problem = _check_operation(node, signal)
            if problem:
                problems.add(where(node), problem)
        if depends:
            signal.add(node)
    gm.graph.lint()
    gm.recompile()
    return notes


def _is_static(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _STATIC_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and (node.args[1] in _STATIC_ATTRIBUTES)
    )


def _check_operation(node: fx.Node, signal: set[fx.Node]) -> str | None:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    operands = [*node.args, *node.kwargs.values()]
    if node.op == "call_method" and target in _STRUCTURAL_METHODS:
        return None
    if node.op == "call_function" and target in _STRUCTURAL_FUNCTIONS:
        return None
    is_addition = (node.op == "call_function" and target in _ADDITIONS) or (
        node.op == "call_method" and target in _ADD_METHODS
    )
    if is_addition:
        constant = [a for a in operands if a not in signal and not _is_zero(a)]
        if constant and any(a in signal for a in operands):
            return (
                f"adds a constant to the signal ({name}); a B-cos network has no offsets. "
                "Remove it, or give the module a rule that reports it as a constant"
            )
        return None
    is_product = (node.op == "call_function" and target in _PRODUCTS) or (
        node.op == "call_method" and target in _PRODUCT_METHODS
    )
    if is_product:
        factors = [a for a in node.args if a in signal]
        divisor_depends = name in ("truediv", "itruediv", "div", "div_") and node.args[1] in signal
        if len(factors) > 1 or divisor_depends:
            return (
                f"multiplies input-dependent tensors ({name}): a gate that must be detached in "
                "explanation mode. Give the module a rule (e.g. a DetachedGate)"
            )
        return None
    return f"calls {name}, which has no dynamic-linear form"


def _is_zero(value: object) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _rewrite_activation(
    gm: fx.GraphModule, node: fx.Node, options: ConversionOptions
) -> tuple[fx.Node, str]:
    """Replace a functional activation by a call of its module; returns the new node."""
    replacement = (
        nn.Identity()
        if options.activations == "identity"
        else _FUNCTIONAL_ACTIVATIONS[node.target](node)
    )
    index = sum(1 for n in gm.graph.nodes if n.op == "call_module" and "bcos_act" in str(n.target))
    name = f"bcos_act_{index}"
    gm.add_submodule(name, replacement)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    fn = getattr(node.target, "__name__", str(node.target))
    return new, f"{where(node)}: functional {fn} -> module '{name}' ({type(replacement).__name__})"


def move_classifier_before_pool(gm: fx.GraphModule) -> str:
    """Apply a linear classifier that follows global average pooling before the pooling.

    ``pool -> [flatten | dropout | identity]* -> Linear`` becomes ``1x1 conv -> pool -> ...``,
    the conv carrying the Linear's weights under the Linear's name. Averaging and a linear map
    commute, so with the original layers the function is unchanged; with B-cos layers the
    contributions stay spatial. Returns a note saying what was done, or why not.
    """
    for pool in gm.graph.nodes:
        if not _is_global_average_pool(gm, pool):
            continue
        node = pool
        while len(node.users) == 1:
            (user,) = node.users
            if user.op == "call_module" and type(gm.get_submodule(str(user.target))) is nn.Linear:
                return _rewrite_head(gm, pool, user)
            if not _is_passthrough(gm, user):
                return f"classifier kept after pooling: {where(user)} follows the pooling"
            node = user
        return "classifier kept after pooling: the pooled features are used more than once"
    return "classifier kept after pooling: no global average pooling followed by a Linear"


def _rewrite_head(gm: fx.GraphModule, pool: fx.Node, linear_node: fx.Node) -> str:
    path = str(linear_node.target)
    linear = gm.get_submodule(path)
    features = pool.args[0]
    assert isinstance(linear, nn.Linear) and isinstance(features, fx.Node)
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    conv = conv.to(linear.weight.device, linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, conv)
    with gm.graph.inserting_before(pool):
        head = gm.graph.call_module(path, (features,))
    head.meta = dict(linear_node.meta)
    pool.replace_input_with(features, head)
    linear_node.replace_all_uses_with(linear_node.args[0])
    gm.graph.erase_node(linear_node)
    gm.graph.lint()
    gm.recompile()
    return f"classifier '{path}' applied as a 1x1 convolution before the global average pooling"


def _is_global_average_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return tuple(dims or ()) in ((2, 3), (-2, -1))
    return False


def _is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) in (nn.Flatten, nn.Dropout, nn.Identity)
    if node.op == "call_function":
        return node.target in (torch.flatten, F.dropout)
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape")
