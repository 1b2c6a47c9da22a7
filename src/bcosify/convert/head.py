"""The classifier applied before the global pooling (RECIPE 4.5), in the module that pools.

A CNN that ends in ``global average pool -> [flatten | dropout]* -> Linear`` gets the linear
layer as a 1 x 1 convolution *before* the pooling, so that the head sees every position on its
own; a transformer that averages its tokens gets ``LayerNorm -> Linear`` applied per token
before the average. Averaging and a linear map commute, so with the original layers the function
is unchanged. The search starts at the output of the network's last traced method and follows
it back; when the output comes from a submodule that contains the whole head (timm's
``NormMlpClassifierHead``) the search goes on in that submodule, and when it comes from a small
head container after the pooling (torchvision's ``classifier = Sequential(Dropout, Linear)``)
the container is called before the pooling instead, with its linear layer as a convolution.
Module paths never change: the convolution takes the linear layer's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import BcosLayerNorm, PooledLayerNorm
from .rules import UnsupportedModule
from .tracing import ModuleGraph, is_torch_builtin

__all__ = ["ContinueIn", "move_classifier_before_pool"]

Inspect = Callable[[ModuleGraph, fx.Node], "ModuleGraph | None"]
"""``inspect(graph, node)``: the traced graph of the container that ``node`` calls (not to be
edited), or None when it cannot be traced."""

_PASSTHROUGH_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)
_SHAPELESS_MODULES = (nn.Dropout, nn.Identity)  # fine on (N, C, H, W) as on (N, C)


@dataclass(frozen=True)
class ContinueIn:
    """The head is inside the submodule at ``path`` (a network path): search its graph."""

    path: str


def move_classifier_before_pool(
    graph: ModuleGraph,
    inspect: Inspect,
    convert_module: Callable[[nn.Module, str], nn.Module],
    set_module: Callable[[str, nn.Module], None],
) -> str | ContinueIn:
    """Apply the classifier that computes ``graph``'s output before the global pooling.

    ``convert_module(module, path)`` converts a module with the rule table (for the layer norm
    of a token head) and ``set_module(path, module)`` puts a module into the network. Returns
    a note saying what was done or why not, or where to go on searching.
    """
    outputs = [n for n in graph.graph.nodes if n.op == "output"]
    result = outputs[0].args[0] if outputs else None
    if not isinstance(result, fx.Node):
        return "classifier kept after pooling: the output is not one tensor"
    head = _back(graph, result, _PASSTHROUGH_MODULES)
    if head.op != "call_module":
        return f"classifier kept after pooling: {graph.label} does not end in a linear layer"
    module = graph.submodule(str(head.target))
    if type(module) is nn.Linear:
        linear = str(head.target)
    elif _is_container(module):
        inner = inspect(graph, head)
        found = _head_container_linear(inner) if inner is not None else None
        if found is None:
            return ContinueIn(graph.full_path(str(head.target)))
        linear = f"{head.target}.{found}"
    else:
        return f"classifier kept after pooling: {graph.label} ends in {type(module).__name__}"
    if len(head.args) != 1 or head.kwargs or not isinstance(head.args[0], fx.Node):
        return f"classifier kept after pooling: '{graph.full_path(linear)}' takes more inputs"
    node, norm = head.args[0], None
    while True:
        if len(node.users) != 1:
            return "classifier kept after pooling: the pooled features are used more than once"
        if _is_global_average_pool(graph, node, inspect):
            if norm is not None:
                break
            return _rewrite_spatial_head(graph, node, head, linear, set_module)
        if _is_token_mean(node) and linear == str(head.target):
            return _rewrite_token_head(graph, node, norm, head, convert_module, set_module)
        pooled = None if norm else _pooled_norm(graph, node, convert_module)
        if pooled is not None:
            norm = (node, pooled)
        elif not _is_passthrough(graph, node, _PASSTHROUGH_MODULES):
            break
        node = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node is None:
            break
    return "classifier kept after pooling: no global average pooling before the linear layer"


def _back(graph: ModuleGraph, node: fx.Node, modules: tuple[type[nn.Module], ...]) -> fx.Node:
    """The first node before ``node`` (itself included) that is not a passthrough."""
    while _is_passthrough(graph, node, modules) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_container(module: nn.Module) -> bool:
    """A module the converter traces (no rule): user code, Sequential, a library's block."""
    return not is_torch_builtin(module) or isinstance(module, nn.Sequential)


def _head_container_linear(graph: ModuleGraph) -> str | None:
    """The linear layer of a container that only applies dropout and then one linear layer."""
    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in graph.graph.nodes if n.op == "output"]
    if len(inputs) != 1 or not outputs or not isinstance(outputs[0].args[0], fx.Node):
        return None
    last = outputs[0].args[0]
    if last.op != "call_module" or type(graph.submodule(str(last.target))) is not nn.Linear:
        return None
    if _back(graph, last.args[0], _SHAPELESS_MODULES) is not inputs[0]:
        return None
    return str(last.target)


def _rewrite_spatial_head(
    graph: ModuleGraph,
    pool: fx.Node,
    head: fx.Node,
    linear_path: str,
    set_module: Callable[[str, nn.Module], None],
) -> str:
    """``pool -> ... -> head`` becomes ``head (linear as 1 x 1 conv) -> pool -> ...``."""
    linear = graph.submodule(linear_path)
    features = pool.args[0]
    assert isinstance(linear, nn.Linear) and isinstance(features, fx.Node)
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    conv = conv.to(linear.weight.device, linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    set_module(graph.full_path(linear_path), conv)
    with graph.graph.inserting_before(pool):
        moved = graph.graph.call_module(str(head.target), (features,))
    moved.meta = dict(head.meta)
    pool.replace_input_with(features, moved)
    head.replace_all_uses_with(head.args[0])
    graph.graph.erase_node(head)
    graph.changed = True
    return (
        f"classifier '{graph.full_path(linear_path)}' applied as a 1x1 convolution before the "
        "global average pooling"
    )


def _rewrite_token_head(
    graph: ModuleGraph,
    mean: fx.Node,
    norm: tuple[fx.Node, nn.Module] | None,
    head: fx.Node,
    convert_module: Callable[[nn.Module, str], nn.Module],
    set_module: Callable[[str, nn.Module], None],
) -> str:
    """``mean -> [norm] -> ... -> head`` becomes ``[pooled norm] -> ... -> head -> mean``."""
    tokens = mean.args[0]
    assert isinstance(tokens, fx.Node)
    for user in list(mean.users):
        user.replace_input_with(mean, tokens)
    with graph.graph.inserting_after(head):
        average = graph.graph.create_node(
            mean.op, mean.target, (head, *mean.args[1:]), dict(mean.kwargs)
        )
    average.meta = dict(mean.meta)
    head.replace_all_uses_with(average, delete_user_cb=lambda user: user is not average)
    graph.graph.erase_node(mean)
    graph.changed = True
    note = ""
    if norm is not None:
        node, pooled = norm
        set_module(graph.full_path(str(node.target)), pooled)
        note = (
            f"; '{graph.full_path(str(node.target))}' -> PooledLayerNorm (normalised like the "
            "average token)"
        )
    return (
        f"classifier '{graph.full_path(str(head.target))}' applied to every token before the "
        "token average" + note
    )


def _pooled_norm(
    graph: ModuleGraph, node: fx.Node, convert_module: Callable[[nn.Module, str], nn.Module]
) -> nn.Module | None:
    """The :class:`PooledLayerNorm` for a layer norm module that follows a token average."""
    if node.op != "call_module":
        return None
    path = str(node.target)
    try:
        converted = convert_module(graph.submodule(path), graph.full_path(path))
    except UnsupportedModule:
        return None
    if type(converted) is PooledLayerNorm:  # a head converted before (reset_classifier)
        return converted
    if type(converted) is not BcosLayerNorm:
        return None
    return PooledLayerNorm.from_layernorm(converted, token_dim=1)


def _is_global_average_pool(graph: ModuleGraph, node: fx.Node, inspect: Inspect) -> bool:
    if node.op == "call_module":
        module = graph.submodule(str(node.target))
        if type(module) is nn.AdaptiveAvgPool2d:
            return module.output_size in (1, (1, 1))
        if not _is_container(module):
            return False
        inner = inspect(graph, node)
        return inner is not None and _pools_globally(inner, inspect)
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and tuple(dims) in ((2, 3), (-2, -1))
    return False


def _pools_globally(graph: ModuleGraph, inspect: Inspect) -> bool:
    """A container (timm's ``SelectAdaptivePool2d``) that only average-pools and flattens."""
    outputs = [n for n in graph.graph.nodes if n.op == "output"]
    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1 or not outputs or not isinstance(outputs[0].args[0], fx.Node):
        return False
    pool = _back(graph, outputs[0].args[0], _PASSTHROUGH_MODULES)
    return pool.args[:1] == (inputs[0],) and _is_global_average_pool(graph, pool, inspect)


def _is_token_mean(node: fx.Node) -> bool:
    """``tokens.mean(dim=1)`` or ``torch.mean(tokens, 1)``: the average over a token sequence."""
    is_mean = (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    )
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return is_mean and dim in (1, (1,), [1])


def _is_passthrough(
    graph: ModuleGraph, node: fx.Node, modules: tuple[type[nn.Module], ...]
) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        return type(graph.submodule(str(node.target))) in modules
    if nn.Flatten not in modules:
        return node.op == "call_function" and node.target is F.dropout
    if node.op == "call_function":
        return node.target in (torch.flatten, F.dropout)
    return node.op == "call_method" and node.target in ("flatten", "view", "reshape")
