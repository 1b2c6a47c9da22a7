"""Re-weighting the first layer for the ``[x, 1 - x]`` input (RECIPE 4.1).

The first layer is either a ``Conv2d`` that takes the image directly (CNN stems, ViT patch
embeddings as convolutions) or a patch-linear embedding: an ``nn.Linear`` applied to patches
that reshapes of the image cut out (``unfold``, ``reshape``/``permute``). It is found by
following the image through the code of the network and, when the image goes straight into a
submodule (a stem ``Sequential``, a ``PatchEmbed``), through that submodule's code. For a
patch-linear embedding the layout of a patch vector is found by running the module's own
reshapes on probe images whose pixels hold their channel and position, so that the rule is
applied per pixel of the patch whatever the layout.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, fx, nn

from .families import padded_convolutions
from .graph import GraphProblems, is_linear_pad, is_static, is_structural
from .options import ConversionOptions
from .tracing import ModuleGraph, TraceFailure, is_torch_builtin, trace_call

__all__ = ["encode_first_layer"]

_REQUIREMENT = (
    "must go straight into one Conv2d (or, through reshapes, into one Linear on patch tokens) "
    "to be encoded"
)
_NOTES = {
    "fold": "first layer '{}' folded for the [x, 1 - x] input: no affine offset remains",
    "paper": "first layer '{}' set to [W, -W] / 2 behind a normalisation layer (paper encoding)",
}


def encode_first_layer(
    graph: ModuleGraph,
    options: ConversionOptions,
    problems: GraphProblems,
    input_size: tuple[int, int] | None = None,
) -> str:
    """Re-weight the layer that first sees the image; returns a note, or adds a problem.

    ``graph`` is the network's traced method that receives the image; ``input_size`` is tried
    first when probing the layout of a patch-linear embedding.

    Example:
        >>> import torch
        >>> from bcosify.convert.tracing import trace_method
        >>> net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2)))
        >>> graph = trace_method(net, "", "forward", {}, {"input"})
        >>> options = ConversionOptions((0.5,) * 3, (0.25,) * 3)
        >>> encode_first_layer(graph, options, GraphProblems()), net[0][0].in_channels
        ("first layer '0.0' folded for the [x, 1 - x] input: no affine offset remains", 6)
    """
    inputs = [n for n in graph.graph.nodes if n.op == "placeholder"][:1]
    # reading the input's shape (for checks, as ViTs do) is not a use of its values
    users = [u for u in inputs[0].users if not is_static(u)] if inputs else []
    first = _first_layer(graph, users[0]) if len(users) == 1 else None
    module = graph.submodule(str(first.target)) if first is not None else None
    # the image itself, or through pass-through modules
    direct = (
        first is not None and first.args[:1] != () and _passed_on(graph, first.args[0]) is inputs[0]
    )
    if (type(module) is nn.Conv2d or isinstance(module, padded_convolutions())) and direct:
        new = _encode_conv(module, graph.full_path(str(first.target)), options, problems)
    elif type(module) is nn.Linear:
        new = _encode_patch_linear(graph, first, module, options, problems, input_size)
    elif module is not None and direct and not is_torch_builtin(module):
        try:  # the image goes straight into a submodule: its code has the first layer
            inner = trace_call(graph, first)
        except TraceFailure:
            inner = None
        if inner is not None:
            return encode_first_layer(inner, options, problems, input_size)
        new = None
        problems.add(f"'{graph.full_path(str(first.target))}'", "could not be traced")
    else:
        found = ", ".join(f"{u.op} {graph.full_path(str(u.target))}" for u in users)
        problems.add("the input", f"{_REQUIREMENT}; it goes to {found or 'nothing'}")
        return ""
    if new is None:
        return ""
    graph.set_submodule(str(first.target), new)
    return _NOTES[options.encoding].format(graph.full_path(str(first.target)))


# modules that pass their input on unchanged in evaluation mode: the image may go through
# them to the first layer (EfficientViT's dropout before its stem)
_PASS_THROUGH = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ZeroPad2d,  # zeros in the encoded input too: W6 . [0, 0] = W . 0
)


def _passes_on(graph: ModuleGraph, node: fx.Node) -> bool:
    return node.op == "call_module" and type(graph.submodule(str(node.target))) in _PASS_THROUGH


def _passed_on(graph: ModuleGraph, value: object) -> object:
    """What reaches ``value`` through pass-through modules and padding with zeros or repeated
    values (the value itself without them). The encoded input pads as the image does: zeros
    are zeros in both, and ``W6 . [0, 0] = W . 0``."""
    while isinstance(value, fx.Node) and value.args:
        if not (_passes_on(graph, value) or is_linear_pad(value)):
            break
        value = value.args[0]
    return value


def _first_layer(graph: ModuleGraph, node: fx.Node) -> fx.Node | None:
    """The module call the input reaches through structural operations and pass-through
    modules only, if there is one."""
    while node.op != "call_module" or _passes_on(graph, node):
        users = [u for u in node.users if not is_static(u)]
        if not (is_structural(node) or _passes_on(graph, node)) or len(users) != 1:
            return None
        (node,) = users
    return node


def _factors(options: ConversionOptions, like: Tensor) -> Tensor:
    """The factor of every encoded channel ``[x, 1 - x]`` by which the weight is multiplied."""
    mean = torch.tensor(options.input_mean, dtype=like.dtype, device=like.device)
    std = torch.tensor(options.input_std, dtype=like.dtype, device=like.device)
    if options.encoding == "fold":
        # W6 . [x, 1 - x] = W . (x - m) / s at every pixel, zero padding included
        return torch.cat([(1 - mean) / std, -mean / std])
    # [W, -W] / 2 on the normalised [x, 1 - x] (mean (m, 1 - m), std (s, s)) is W . (x - m) / s
    return torch.cat([torch.full_like(mean, 0.5), torch.full_like(mean, -0.5)])


def _encode_conv(
    conv: nn.Conv2d, path: str, options: ConversionOptions, problems: GraphProblems
) -> nn.Module | None:
    channels = len(options.input_mean)
    if conv.in_channels != channels or conv.groups != 1:
        problems.add(
            f"'{path}' (Conv2d)",
            f"the first convolution must take the {channels} "
            f"input channels with groups=1, it has in_channels={conv.in_channels}, "
            f"groups={conv.groups}",
        )
        return None
    weight = conv.weight.detach()
    encoded = weight.repeat(1, 2, 1, 1) * _factors(options, weight).view(1, -1, 1, 1)
    new = copy.deepcopy(conv)  # its own class: a convolution that pads in forward stays one
    new.in_channels = 2 * channels
    new.weight = nn.Parameter(encoded.clone())
    return new


def _encode_patch_linear(
    graph: ModuleGraph,
    node: fx.Node,
    linear: nn.Linear,
    options: ConversionOptions,
    problems: GraphProblems,
    input_size: tuple[int, int] | None,
) -> nn.Module | None:
    """Fold a Linear on patch tokens: each weight column belongs to one channel of one pixel."""
    where = f"'{graph.full_path(str(node.target))}' (Linear)"
    channels = len(options.input_mean)
    layouts = _patch_layouts(graph, node, channels, linear.in_features, input_size)
    if isinstance(layouts, str):
        problems.add("the input", f"{_REQUIREMENT}; it reaches {where} {layouts}")
        return None
    original, encoded = layouts
    column = {key: j for j, key in enumerate(original)}
    # encoded channel e reads colour channel e mod C of the same pixel
    source = [column.get((e % channels, pixel)) for e, pixel in encoded]
    if any(j is None for j in source):
        problems.add(where, "the patches of the encoded input do not match those of the image")
        return None
    weight = linear.weight.detach()
    factors = _factors(options, weight)[torch.tensor([e for e, _ in encoded])]
    new = nn.Linear(
        len(encoded), linear.out_features, linear.bias is not None, weight.device, weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight[:, torch.tensor(source)] * factors)
        if linear.bias is not None:
            new.bias.copy_(linear.bias)
    return new


def _patch_layouts(
    graph: ModuleGraph,
    node: fx.Node,
    channels: int,
    features: int,
    input_size: tuple[int, int] | None,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | str:
    """``(channel, pixel)`` of every feature of one patch token, for the image and for the
    encoded ``[x, 1 - x]`` input; or why they could not be found."""
    reshapes = _up_to(graph, node)
    patch = math.isqrt(features // channels)
    sizes = [input_size] if input_size else []
    sizes += [(patch * k, patch * k) for k in (1, 2, 4, 8, 16)]
    for size in sizes:
        original = _probe(reshapes, channels, size)
        if original is None or len(original) != features:
            continue
        encoded = _probe(reshapes, 2 * channels, size)
        if encoded is None:
            return (
                "through reshapes that do not accept the "
                f"{2 * channels}-channel encoded input (a hard-coded channel count?)"
            )
        return original, encoded
    return (
        "through reshapes, but not as patch tokens (batch, tokens, features) for any image "
        "size tried; write the patch embedding as a Conv2d"
    )


def _up_to(graph: ModuleGraph, node: fx.Node) -> fx.GraphModule:
    """A module computing the input of ``node`` from the module's input (asserts included)."""
    partial, copies = fx.Graph(), {}
    for original in graph.graph.nodes:
        if original is node:
            break
        copies[original] = partial.node_copy(original, lambda n: copies[n])
    partial.output(copies[node.args[0]])
    return fx.GraphModule(graph.module, partial)


def _probe(
    reshapes: fx.GraphModule, channels: int, size: tuple[int, int]
) -> list[tuple[int, int]] | None:
    """Run the reshapes on an image whose pixels hold ``channel * H * W + pixel + 1``; read
    ``(channel, pixel)`` off the first patch token without padding."""
    height, width = size
    ids = torch.arange(1, channels * height * width + 1, dtype=torch.float64)
    try:
        with torch.no_grad():
            tokens = reshapes(ids.view(1, channels, height, width))
    except Exception:  # the reshapes reject this size: the caller tries the next one
        return None
    if not isinstance(tokens, Tensor) or tokens.ndim < 3:
        return None
    tokens = tokens.reshape(-1, tokens.shape[-1])
    complete = tokens[(tokens > 0).all(1)]
    if not len(complete):
        return None
    index = complete[0].long() - 1
    channel, pixel = index // (height * width), index % (height * width)
    return list(zip(channel.tolist(), pixel.tolist(), strict=True))
