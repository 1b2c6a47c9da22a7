"""The conversion rule table: module type -> B-cos replacement.

A rule is a function ``rule(module, context) -> nn.Module`` that returns the replacement (or the
module itself to keep it). Types are looked up exactly, not by ``isinstance``: a subclass may
change ``forward`` (timm's ``Conv2dSame`` pads inside it), so it needs a rule of its own. A
module whose type has a rule is converted as a whole; every other module is traced on its own
and its code checked (see :mod:`bcosify.convert.tree`). This module holds the generic rules;
each model library's own building blocks have theirs in :mod:`bcosify.convert.families`, and
:func:`bcosify.convert.default_rules` puts them together.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import device_of
from ..nn import (
    BcosAttentionPool2d,
    BcosBatchNorm1d,
    BcosBatchNorm2d,
    BcosConv2d,
    BcosGELU,
    BcosGlobalResponseNorm,
    BcosGroupNorm,
    BcosHardswish,
    BcosLayerNorm,
    BcosLayerNorm2d,
    BcosLinear,
    BcosMish,
    BcosMultiheadAttention,
    BcosNormalize,
    BcosQuickGELU,
    BcosReLU6,
    BcosSiLU,
    BcosSquaredReLU,
    BcosWindowAttention,
    ConstantTerms,
    DetachedFactor,
    DetachedGate,
    DynamicAttention,
    PooledLayerNorm,
)
from ..nn.trace import traced_constant
from .dynamic import dynamic_class
from .options import ConversionOptions

__all__ = [
    "Rule",
    "RuleContext",
    "UnsupportedModule",
    "converted_children",
    "generic_rules",
    "keep",
    "plain_conv2d",
    "qkv_projection",
    "squeeze_excitation",
    "with_bias",
]


@dataclass(frozen=True)
class RuleContext:
    """What a rule may need besides the module.

    Attributes:
        options: the conversion options.
        path: the module's qualified name in the model.
        convert_child: converts a submodule with the rule table (for rules of fused modules
            that contain, say, an activation): ``context.convert_child(module.act, "act")``.
    """

    options: ConversionOptions
    path: str
    convert_child: Callable[[nn.Module, str], nn.Module]


class UnsupportedModule(Exception):
    """Raised by a rule for a module it cannot convert; the message says why.

    :func:`bcosify.convert` collects these for every module and raises one
    :class:`~bcosify.errors.ConversionError` that lists them all.
    """


Rule = Callable[[nn.Module, RuleContext], nn.Module]


def keep(module: nn.Module, context: RuleContext) -> nn.Module:
    """The rule for modules that are already dynamic linear: keep them as they are.

    Example:
        >>> import torch
        >>> from bcosify.convert import ConversionOptions
        >>> relu = torch.nn.ReLU()
        >>> options = ConversionOptions((0.5,), (0.5,))
        >>> keep(relu, RuleContext(options, "relu", lambda m, name: m)) is relu
        True
    """
    return module


class Biased(nn.Module):
    """A B-cos layer plus the original bias (``keep_bias=True``): for equivalence checks, and
    for models that keep their biases, whose explanations report each as a named constant term
    (``<module path>.bias``)."""

    def __init__(self, layer: nn.Module, bias: Tensor, channel_dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.bias = nn.Parameter(bias.detach().clone())
        self.channel_dim = channel_dim

    def __getattr__(self, name: str) -> Any:
        # the layer's attributes through the wrapper: code that reads a convolution's
        # kernel_size or stride (DaVit's downsampling pads by them) keeps working
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__.get("_modules", {}).get("layer")
            if layer is None or name == "bias":  # its own bias, even before it is set
                raise
            return getattr(layer, name)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        shape = [1] * out.ndim
        shape[self.channel_dim] = -1
        return out + traced_constant(self, "bias", self.bias.view(shape), out)


def with_bias(
    layer: nn.Module, bias: Tensor | None, options: ConversionOptions, dim: int
) -> nn.Module:
    """``layer``, plus ``bias`` along dimension ``dim`` (a named constant) if it is not None and
    the options keep biases."""
    return Biased(layer, bias, dim) if options.keep_bias and bias is not None else layer


def conv2d(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.Conv2d)
    layer = BcosConv2d.from_conv(module, b=context.options.b)
    return with_bias(layer, module.bias, context.options, 1)


def plain_linear_map(module: nn.Module, context: RuleContext) -> nn.Module:
    """A layer that has no B-cos form here, a transposed convolution (upsampling in
    LowFormer's attention) or a 1-D convolution (CoaT's aggregation of its class tokens),
    stays a plain linear map, as the published recipe keeps attention's projections: linear,
    so explanations stay exact; its bias a named constant with ``keep_bias``, else dropped.

    Example:
        >>> from bcosify.convert import ConversionOptions
        >>> context = RuleContext(ConversionOptions((0.5,), (0.5,)), "up", lambda m, n: m)
        >>> plain_linear_map(torch.nn.ConvTranspose2d(4, 4, 2, stride=2), context).bias is None
        True
    """
    assert isinstance(module, (nn.ConvTranspose2d, nn.Conv1d))
    plain = copy.deepcopy(module)
    plain.bias = None
    return with_bias(plain, module.bias, context.options, 1)


def linear(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.Linear)
    layer = BcosLinear.from_linear(module, b=context.options.b)
    return with_bias(layer, module.bias, context.options, -1)


def qkv_projection(module: nn.Module, context: RuleContext) -> nn.Module:
    """The rule for a linear layer computing queries, keys or values of attention.

    With ``qkv_projection="bcos"`` it is the ordinary :func:`linear` rule; with ``"linear"`` (the
    published choice) the layer stays a plain linear layer, without its bias unless
    ``keep_bias``.

    Example:
        >>> from bcosify.convert import ConversionOptions
        >>> context = RuleContext(ConversionOptions((0.5,), (0.5,)), "qkv", lambda m, n: m)
        >>> qkv_projection(torch.nn.Linear(4, 12), context)
        Linear(in_features=4, out_features=12, bias=False)
    """
    assert isinstance(module, nn.Linear)
    if context.options.qkv_projection == "bcos":
        return linear(module, context)
    if module.bias is None or context.options.keep_bias:
        return module
    plain = nn.Linear(
        module.in_features,
        module.out_features,
        bias=False,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(module.weight)
    return plain


def multihead_attention(module: nn.Module, context: RuleContext) -> nn.Module:
    """``nn.MultiheadAttention`` -> :class:`~bcosify.nn.BcosMultiheadAttention`.

    The packed input projection is split into query, key and value layers (converted by
    :func:`qkv_projection`); ``out_proj`` is converted by the table like any linear layer.
    """
    assert isinstance(module, nn.MultiheadAttention)
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedModule(
            "learned key/value bias tokens (add_bias_kv=True) and add_zero_attn=True add "
            "constants inside the attention; build the model without them"
        )
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    # the biases matter only to an equivalence check (keep_bias); otherwise they are dropped
    with_bias = module.in_proj_bias is not None and context.options.keep_bias
    biases = module.in_proj_bias.chunk(3) if with_bias else (None,) * 3
    projections = []
    for weight, bias in zip(weights, biases, strict=True):
        layer = nn.Linear(
            weight.shape[1], weight.shape[0], bias is not None, weight.device, weight.dtype
        )
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        projections.append(qkv_projection(layer, context))
    return BcosMultiheadAttention(
        *projections,
        context.convert_child(module.out_proj, "out_proj"),
        module.num_heads,
        dropout=module.dropout,
        batch_first=module.batch_first,
    )


def batchnorm2d(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.BatchNorm2d)
    return BcosBatchNorm2d.from_batchnorm(module, bias=context.options.keep_bias)


def batchnorm1d(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.BatchNorm1d)
    return BcosBatchNorm1d.from_batchnorm(module, bias=context.options.keep_bias)


def _copy_affine(source: nn.Module, target: nn.Module, keep_bias: bool) -> nn.Module:
    with torch.no_grad():
        if getattr(source, "weight", None) is not None and target.weight is not None:
            target.weight.copy_(source.weight)
        if keep_bias and getattr(source, "bias", None) is not None and target.bias is not None:
            target.bias.copy_(source.bias)
    # the source's floating type too: a float64, float16 or bfloat16 model stays one
    floating = next((p for p in source.parameters() if p.is_floating_point()), None)
    return target.to(device_of(source), floating.dtype if floating is not None else None)


def _has(module: nn.Module, name: str) -> bool:
    return getattr(module, name, None) is not None


def layernorm(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.LayerNorm)
    if len(module.normalized_shape) != 1:
        raise UnsupportedModule(
            f"normalises over {module.normalized_shape}; only the last dimension is supported"
        )
    keep_bias = context.options.keep_bias and _has(module, "bias")
    target = BcosLayerNorm(
        module.normalized_shape[0], module.eps, _has(module, "weight"), bias=keep_bias
    )
    return _copy_affine(module, target, keep_bias)


def layernorm2d(module: nn.Module, context: RuleContext) -> nn.Module:
    """torchvision's and timm's ``LayerNorm2d`` (channels of an NCHW tensor)."""
    assert isinstance(module, nn.LayerNorm)
    keep_bias = context.options.keep_bias and _has(module, "bias")
    target = BcosLayerNorm2d(
        module.normalized_shape[0], module.eps, _has(module, "weight"), bias=keep_bias
    )
    return _copy_affine(module, target, keep_bias)


def groupnorm(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.GroupNorm)
    keep_bias = context.options.keep_bias and _has(module, "bias")
    target = BcosGroupNorm(
        module.num_groups, module.num_channels, module.eps, module.affine, bias=keep_bias
    )
    return _copy_affine(module, target, keep_bias)


def converted_children(module: nn.Module, context: RuleContext) -> nn.Module:
    """The rule for a container whose own code is dynamic linear but cannot be traced (it
    branches on the input's shape, as timm's ``ConvMlp`` does): every child converted by the
    rule table, the module's own forward kept.

    Example:
        >>> import torch
        >>> from bcosify.convert import ConversionOptions
        >>> block = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> context = RuleContext(ConversionOptions((0.5,), (0.5,)), "b", lambda m, n: m)
        >>> converted_children(block, context) is block
        True
    """
    for name, child in list(module.named_children()):
        setattr(module, name, context.convert_child(child, name))
    return module


class _ConvolutionCall(torch.overrides.TorchFunctionMode):
    """Records the arguments of the ``F.conv2d`` a module's forward makes, and whether it pads
    the input itself first (``F.pad``)."""

    ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    DEFAULTS = (None, None, None, 1, 0, 1, 1)

    def __init__(self) -> None:
        super().__init__()
        self.call: dict[str, Any] | None = None
        self.pads = False

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d:
            self.call = {**dict(zip(self.ARGUMENTS, self.DEFAULTS, strict=True)), **kwargs}
            self.call.update(zip(self.ARGUMENTS, args, strict=False))
        self.pads = self.pads or func is F.pad
        return func(*args, **kwargs)


def plain_conv2d(module: nn.Conv2d, padded: type[nn.Conv2d] | None = None) -> nn.Conv2d:
    """A convolution that computes its weight from its parameters on every call (timm's
    weight-standardised ``StdConv2d`` and ``ScaledStdConv2d``: NF-Nets, BiT) as a plain
    ``nn.Conv2d`` with that weight, computed once.

    The weight is the one the module's own forward passes to ``F.conv2d`` (recorded on one input
    of zeros), so its arithmetic is not repeated here. A forward that pads its input itself
    becomes ``padded``, a convolution class that pads the same way (the caller knows how: timm's
    ``StdConv2dSame`` becomes its ``Conv2dSame``).

    Raises:
        UnsupportedModule: if the forward pads the input itself and no ``padded`` class is
            given, or calls no ``F.conv2d``.

    Example:
        >>> import torch, timm.layers
        >>> conv = timm.layers.ScaledStdConv2d(3, 4, 3)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(plain_conv2d(conv)(x), conv(x), atol=1e-5)
        True
    """
    recorder = _ConvolutionCall()
    size = [k * d for k, d in zip(module.kernel_size, module.dilation, strict=True)]
    probe = torch.zeros(1, module.in_channels, *size, device=module.weight.device)
    with torch.no_grad(), recorder:
        module(probe.to(module.weight.dtype))
    if recorder.call is None or (recorder.pads and padded is None):
        raise UnsupportedModule(
            "its forward does not call F.conv2d on its input alone (it pads inside forward, "
            "or computes something else)"
        )
    call = recorder.call
    weight, bias = call["weight"], call["bias"]
    plain = (padded if recorder.pads and padded is not None else nn.Conv2d)(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        call["stride"],
        call["padding"],
        call["dilation"],
        call["groups"],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    return plain


def activation(replacement: Callable[[nn.Module], nn.Module]) -> Rule:
    """A rule for an activation: its dynamic-linear form, or an identity if asked for."""

    def rule(module: nn.Module, context: RuleContext) -> nn.Module:
        if context.options.activations == "identity":
            return nn.Identity()
        return replacement(module)

    rule.activation = True  # type: ignore[attr-defined]  # a gate, when it gates a product
    return rule


def maxpool2d(module: nn.Module, context: RuleContext) -> nn.Module:
    assert isinstance(module, nn.MaxPool2d)
    if context.options.maxpool == "keep":
        return module
    if module.dilation not in (1, (1, 1)):
        raise UnsupportedModule(
            "a dilated max pool has no average-pool counterpart; use maxpool='keep'"
        )
    return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)


GateFunction = Callable[[nn.Module, Tensor], Tensor]


def squeeze_excitation(gate: GateFunction) -> Rule:
    """A rule for a block computing ``x * gate(x)`` (squeeze-and-excitation): the block keeps its
    class, path and children, and its gate is detached in explanation mode.

    The block becomes an instance of ``Bcos<Block>``, a subclass of its own class (so
    ``isinstance`` still holds) and of :class:`~bcosify.nn.DetachedGate`, whose forward is
    ``x * detach_if_explaining(gate(block, x))``. The gate keeps the block's layers, biases
    included: it scales the input, it is not on the explained path.
    """

    def rule(module: nn.Module, context: RuleContext) -> nn.Module:
        module.__class__ = dynamic_class(_gated_class, type(module), gate)
        return module

    return rule


def _gated_class(cls: type, gate: GateFunction) -> type:
    """``Bcos<cls>``: ``cls`` with the forward ``x * gate(x)``, the gate detached when explaining
    (``gate`` a module-level function, so that the converted model pickles)."""

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        return x * self.detach_if_explaining(gate(self, x))

    namespace = {
        "forward": forward,
        "__module__": cls.__module__,
        "_bcosify_original": cls,
        "_bcosify_converted": True,
    }
    return type(f"Bcos{cls.__name__}", (DetachedGate, cls), namespace)


def generic_rules() -> dict[type[nn.Module], Rule]:
    """The rules for torch.nn's own modules and bcosify's B-cos modules (a fresh dict).

    Example:
        >>> import torch
        >>> generic_rules()[torch.nn.Identity] is keep
        True
    """
    rules: dict[type[nn.Module], Rule] = {
        nn.Conv2d: conv2d,
        nn.ConvTranspose2d: plain_linear_map,
        nn.Conv1d: plain_linear_map,
        nn.Linear: linear,
        nn.BatchNorm1d: batchnorm1d,
        nn.BatchNorm2d: batchnorm2d,
        nn.LayerNorm: layernorm,
        nn.GroupNorm: groupnorm,
        nn.ReLU: activation(lambda m: m),
        nn.ReLU6: activation(lambda m: BcosReLU6()),
        nn.GELU: activation(lambda m: BcosGELU(m.approximate)),
        nn.SiLU: activation(lambda m: BcosSiLU()),
        nn.Hardswish: activation(lambda m: BcosHardswish()),
        nn.Mish: activation(lambda m: BcosMish()),
        nn.MaxPool2d: maxpool2d,
        nn.modules.linear.NonDynamicallyQuantizableLinear: linear,
        nn.MultiheadAttention: multihead_attention,
    }
    # modules that are B-cos already (a model may be partly converted by hand)
    for bcos_module in (
        BcosConv2d,
        BcosLinear,
        BcosBatchNorm1d,
        BcosBatchNorm2d,
        BcosLayerNorm,
        BcosLayerNorm2d,
        BcosGroupNorm,
        BcosGELU,
        BcosSiLU,
        BcosHardswish,
        BcosMish,
        BcosReLU6,
        DetachedGate,
        DetachedFactor,
        BcosGlobalResponseNorm,
        DynamicAttention,
        BcosMultiheadAttention,
        BcosWindowAttention,
        BcosAttentionPool2d,
        BcosQuickGELU,
        BcosSquaredReLU,
        BcosNormalize,
        PooledLayerNorm,
        ConstantTerms,
    ):
        rules[bcos_module] = keep
    for linear_module in (
        nn.Identity,
        nn.Flatten,
        nn.Dropout,
        nn.Dropout2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.AvgPool1d,
        nn.AdaptiveAvgPool1d,
        nn.ZeroPad2d,
        nn.Unfold,
        nn.Fold,
        nn.ReflectionPad2d,
        nn.ReplicationPad2d,
        nn.Upsample,
    ):
        rules[linear_module] = keep
    return rules
