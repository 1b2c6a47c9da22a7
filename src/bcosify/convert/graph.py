"""Tracing a model with torch.fx, and checking and rewriting its functional calls.

Modules with a rule are leaves of the trace; everything else is traced through, so a custom
block's ``forward`` is checked operation by operation: structural and linear operations pass,
functional activations and ``F.scaled_dot_product_attention`` are rewritten to their
dynamic-linear modules, parameters and buffers added to or concatenated with the token sequence
(positional embeddings, class and register tokens) are routed through
:class:`~bcosify.nn.ConstantTerms` so that explanations report them by name, and everything else
(a functional sigmoid, a product of two input-dependent tensors, an explicitly computed
attention, a bias added to the signal) is reported with the path of the module whose
``forward`` does it. Computations that do not depend on the input (shape arithmetic, a
position bias computed from a table) are not on the explained path and are left alone.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ConversionError
from ..nn import (
    BcosGELU,
    BcosHardswish,
    BcosLayerNorm,
    BcosMish,
    BcosReLU6,
    BcosSiLU,
    ConstantTerms,
    DynamicAttention,
    PooledLayerNorm,
)
from .options import ConversionOptions
from .rules import UnsupportedModule

__all__ = [
    "GraphProblems",
    "GraphRewrites",
    "check_and_rewrite",
    "is_static",
    "is_structural",
    "move_classifier_before_pool",
    "trace",
]


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
}
_PRODUCT_METHODS = {"mul", "mul_", "div", "div_", "matmul", "bmm"}
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
    """What :func:`check_and_rewrite` changed in the graph.

    Attributes:
        notes: one line per rewrite, for the conversion report.
        constants: one line per constant routed through :class:`~bcosify.nn.ConstantTerms`,
            starting with the name explanations report it under (relative to the graph).
        qkv_projections: paths of the linear layers that compute queries, keys or values of an
            attention (converted as the ``qkv_projection`` option says).
        off_path_modules: paths of the modules that are only called on constants (an MLP
            computing a position bias): they are not on the explained path and keep their
            function.
    """

    notes: list[str] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    qkv_projections: set[str] = field(default_factory=set)
    off_path_modules: set[str] = field(default_factory=set)


def check_and_rewrite(
    gm: fx.GraphModule,
    options: ConversionOptions,
    has_rule: Callable[[nn.Module], bool],
    problems: GraphProblems,
) -> GraphRewrites:
    """Check every node of ``gm``; rewrite functional activations, attention and constants.

    Adds a line to ``problems`` for everything that cannot be converted.
    """
    rewrites = GraphRewrites()
    signal: set[fx.Node] = set()  # nodes whose value depends on the input
    on_path: set[str] = set()
    off_path: set[str] = set()
    for node in list(gm.graph.nodes):
        depends = any(arg in signal for arg in _data_inputs(node))
        if node.op == "placeholder":
            signal.add(node)
            continue
        if node.op in ("get_attr", "output"):
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if not depends:  # computes a constant, such as an MLP on relative coordinates
                off_path.add(str(node.target))
            elif not has_rule(module):
                problems.add(
                    f"'{node.target}' ({type(module).__name__})",
                    "no conversion rule for this module type",
                )
            else:
                on_path.add(str(node.target))
        elif not depends or is_static(node):
            # a constant of the network (shape arithmetic, a position bias computed from a
            # table): not on the explained path; where it joins the signal is checked there
            continue
        elif node.op == "call_function" and node.target in _FUNCTIONAL_ACTIVATIONS:
            node = _rewrite_activation(gm, node, options, rewrites)
        elif node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            node = _rewrite_attention(gm, node, rewrites)
        else:
            problem = _route_constants(gm, node, signal, rewrites) or _check_operation(node, signal)
            if problem:
                problems.add(where(node), problem)
        if depends:
            signal.add(node)
    rewrites.off_path_modules = off_path - on_path
    gm.graph.lint()
    gm.recompile()
    return rewrites


def is_static(node: fx.Node) -> bool:
    """True for a node that reads a shape, size or type: its value is not a signal.

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(lambda x: x.view(x.shape[0], -1)).graph
        >>> [n.name for n in graph.nodes if is_static(n)]
        ['getattr_1']
    """
    if node.op == "call_method":
        return node.target in _STATIC_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and (node.args[1] in _STATIC_ATTRIBUTES)
    )


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
    return (node.op == "call_method" and node.target in _STRUCTURAL_METHODS) or (
        node.op == "call_function" and node.target in _STRUCTURAL_FUNCTIONS
    )


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
    is_product = (node.op == "call_function" and node.target in _PRODUCTS) or (
        node.op == "call_method" and node.target in _PRODUCT_METHODS
    )
    if is_product:
        factors = [a for a in node.args if a in signal]
        divisor_depends = name in ("truediv", "itruediv", "div", "div_") and node.args[1] in signal
        if len(factors) > 1 and name in ("matmul", "bmm"):
            return f"multiplies input-dependent tensors ({name}): {_ATTENTION_HINT}"
        if len(factors) > 1 or divisor_depends:
            return (
                f"multiplies input-dependent tensors ({name}): a gate that must be detached in "
                "explanation mode. Give the module a rule (e.g. a DetachedGate)"
            )
        return None
    if node.target in _SOFTMAXES:
        return f"calls softmax: {_ATTENTION_HINT}"
    return f"calls {name}, which has no dynamic-linear form"


def _is_zero(value: object) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _route_constants(
    gm: fx.GraphModule, node: fx.Node, signal: set[fx.Node], rewrites: GraphRewrites
) -> str | None:
    """Route the constants added to or concatenated with the signal through ConstantTerms.

    Allowed are parameters and buffers (possibly expanded or reshaped): concatenated with the
    signal (class, distillation and register tokens), or added to it when they vary along more
    than one dimension (positional embeddings). A tensor with one value per channel is a bias
    and stays an error, and so does a number or a computed tensor. Returns the problem, if any.
    """
    if _is_addition(node):
        operands = [*node.args, *(v for k, v in node.kwargs.items() if k != "alpha")]
        constants = [a for a in operands if a not in signal and not _is_zero(a)]
        like = next((a for a in operands if a in signal), None)
        verb = "adds a constant to the signal"
    elif node.op == "call_function" and node.target in _CONCATENATIONS:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors", ())
        constants = [a for a in tensors if a not in signal]
        like = None
        verb = "concatenates a constant with the signal"
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
        biases = [s for s in source if like is not None and not _varies_along_two_dims(gm, s)]
        if biases:
            return (
                f"{verb} ({_name(node)}): '{biases[0]}' has one value per channel, a bias; a "
                "B-cos network has no biases. Remove it (or fold it into the preceding layer)"
            )
    for operand, source in zip(constants, sources, strict=True):
        assert isinstance(operand, fx.Node)
        container = _constant_terms(gm)
        label = "+".join(source)
        with gm.graph.inserting_before(node):
            term = gm.graph.call_module(
                container, (label, operand, operand if like is None else like)
            )
        term.meta = dict(node.meta)
        node.replace_input_with(operand, term)
        how = "concatenated with" if like is None else "added to"
        rewrites.constants.append(f"{container}.{label}: {how} the signal in {where(node)}")
    return None


def _constant_sources(value: object) -> list[str] | None:
    """The parameters and buffers a constant is made of, if only reshaping, expanding or
    selecting them makes it; None (or empty) for anything else."""
    if not isinstance(value, fx.Node):
        return None
    if value.op == "get_attr":
        return [str(value.target)]
    if is_static(value):
        return []
    if not is_structural(value):
        return None
    sources: list[str] = []
    for arg in _data_inputs(value):
        found = _constant_sources(arg)
        if found is None:
            return None
        sources += found
    return sources


def _varies_along_two_dims(gm: fx.GraphModule, target: str) -> bool:
    tensor = functools.reduce(getattr, target.split("."), gm)
    return sum(size > 1 for size in tensor.shape) >= 2


def _constant_terms(gm: fx.GraphModule) -> str:
    """The name of the graph's ConstantTerms module, added on first use."""
    name = "constants"
    while hasattr(gm, name) and not isinstance(getattr(gm, name), ConstantTerms):
        name = f"bcos_{name}"
    if not hasattr(gm, name):
        gm.add_submodule(name, ConstantTerms())
    return name


def _call_new_module(gm: fx.GraphModule, node: fx.Node, prefix: str, module: nn.Module) -> fx.Node:
    """Replace ``node`` by a call of ``module`` (added as ``<prefix>_<i>``) on its arguments."""
    index = 0
    while hasattr(gm, f"{prefix}_{index}"):
        index += 1
    name = f"{prefix}_{index}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, node.args, dict(node.kwargs))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _rewrite_activation(
    gm: fx.GraphModule, node: fx.Node, options: ConversionOptions, rewrites: GraphRewrites
) -> fx.Node:
    """Replace a functional activation by a call of its module; returns the new node."""
    replacement = (
        nn.Identity()
        if options.activations == "identity"
        else _FUNCTIONAL_ACTIVATIONS[node.target](node)
    )
    new = _call_new_module(gm, node, "bcos_act", replacement)
    new.args = new.args[:1]  # the activation modules take the tensor only
    new.kwargs = {}
    rewrites.notes.append(
        f"{where(new)}: functional {_name(node)} -> module '{new.target}' "
        f"({type(replacement).__name__})"
    )
    return new


def _rewrite_attention(gm: fx.GraphModule, node: fx.Node, rewrites: GraphRewrites) -> fx.Node:
    """Replace ``F.scaled_dot_product_attention`` by a :class:`DynamicAttention` call, and
    record the linear layers that compute its queries, keys and values."""
    new = _call_new_module(gm, node, "bcos_attention", DynamicAttention())
    operands = [*new.args[:3], *(new.kwargs.get(k) for k in ("query", "key", "value"))]
    found = {_projection(gm, operand) for operand in operands} - {None}
    rewrites.qkv_projections.update(found)
    computed = f", projections {sorted(found)}" if found else ""
    rewrites.notes.append(
        f"{where(new)}: functional scaled_dot_product_attention -> module '{new.target}' "
        f"(DynamicAttention: queries and keys detached when explaining{computed})"
    )
    return new


def _projection(gm: fx.GraphModule, value: object) -> str | None:
    """The path of the ``nn.Linear`` that computes ``value``, looking back through reshapes,
    selections and modules without a weight matrix (norms, dropout); None if there is none."""
    while isinstance(value, fx.Node):
        if value.op == "call_module":
            module = gm.get_submodule(str(value.target))
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                return str(value.target) if type(module) is nn.Linear else None
        elif not is_structural(value):
            return None
        value = value.args[0] if value.args else None
    return None


def move_classifier_before_pool(
    gm: fx.GraphModule, convert_module: Callable[[nn.Module, str], nn.Module]
) -> str:
    """Apply a linear classifier that follows global average pooling before the pooling.

    For a CNN, ``pool -> [flatten | dropout | identity]* -> Linear`` becomes
    ``1x1 conv -> pool -> ...``, the conv carrying the Linear's weights under the Linear's name.
    For a transformer, ``tokens.mean(dim=1) -> [LayerNorm] -> [dropout | identity]* -> Linear``
    becomes ``LayerNorm of the average token, per token -> Linear per token -> mean``, with the
    norm converted by ``convert_module`` (the rule table) into a
    :class:`~bcosify.nn.PooledLayerNorm`. Averaging and a linear map commute, so with the
    original layers the function is unchanged; with B-cos layers the head sees every position
    on its own. The last pooling of the graph is the one considered. Returns a note saying what
    was done, or why not.
    """
    pools = [n for n in gm.graph.nodes if _is_global_average_pool(gm, n) or _is_token_mean(n)]
    if not pools:
        return "classifier kept after pooling: no global average pooling followed by a Linear"
    pool = pools[-1]
    spatial = _is_global_average_pool(gm, pool)
    node, norm = pool, None
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "call_module" and type(gm.get_submodule(str(user.target))) is nn.Linear:
            if spatial:
                return _rewrite_head(gm, pool, user)
            return _rewrite_token_head(gm, pool, norm, user)
        pooled = None if spatial or norm else _pooled_norm(gm, user, convert_module)
        if pooled is not None:
            norm = (user, pooled)
        elif not _is_passthrough(gm, user):
            return f"classifier kept after pooling: {where(user)} follows the pooling"
        node = user
    return "classifier kept after pooling: the pooled features are used more than once"


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
    gm.set_submodule(path, conv)
    with gm.graph.inserting_before(pool):
        head = gm.graph.call_module(path, (features,))
    head.meta = dict(linear_node.meta)
    pool.replace_input_with(features, head)
    linear_node.replace_all_uses_with(linear_node.args[0])
    gm.graph.erase_node(linear_node)
    gm.graph.lint()
    gm.recompile()
    return f"classifier '{path}' applied as a 1x1 convolution before the global average pooling"


def _rewrite_token_head(
    gm: fx.GraphModule,
    mean: fx.Node,
    norm: tuple[fx.Node, nn.Module] | None,
    linear_node: fx.Node,
) -> str:
    tokens = mean.args[0]
    assert isinstance(tokens, fx.Node)
    for user in list(mean.users):
        user.replace_input_with(mean, tokens)
    with gm.graph.inserting_after(linear_node):
        average = gm.graph.create_node(
            mean.op, mean.target, (linear_node, *mean.args[1:]), dict(mean.kwargs)
        )
    average.meta = dict(mean.meta)
    linear_node.replace_all_uses_with(average, delete_user_cb=lambda user: user is not average)
    gm.graph.erase_node(mean)
    note = ""
    if norm is not None:
        node, pooled = norm
        gm.set_submodule(str(node.target), pooled)
        note = f"; '{node.target}' -> PooledLayerNorm (normalised like the average token)"
    gm.graph.lint()
    gm.recompile()
    return (
        f"classifier '{linear_node.target}' applied to every token before the token average" + note
    )


def _pooled_norm(
    gm: fx.GraphModule, node: fx.Node, convert_module: Callable[[nn.Module, str], nn.Module]
) -> nn.Module | None:
    """The :class:`PooledLayerNorm` for a layer norm module that follows a token average."""
    if node.op != "call_module":
        return None
    path = str(node.target)
    try:
        converted = convert_module(gm.get_submodule(path), path)
    except UnsupportedModule:
        return None
    if type(converted) is not BcosLayerNorm:
        return None
    return PooledLayerNorm.from_layernorm(converted, token_dim=1)


def _is_global_average_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and tuple(dims) in ((2, 3), (-2, -1))
    return False


def _is_token_mean(node: fx.Node) -> bool:
    """``tokens.mean(dim=1)`` or ``torch.mean(tokens, 1)``: the average over a token sequence."""
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return is_mean and dim in (1, (1,), [1])


def _is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))) in (nn.Flatten, nn.Dropout, nn.Identity)
    if node.op == "call_function":
        return node.target in (torch.flatten, F.dropout)
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape")
