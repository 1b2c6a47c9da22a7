"""timm: fused norm-activation, squeeze-and-excitation variants, its ``LayerNorm``s, fused
attention, and timm's classifier interface (``forward_features``/``forward_head``,
``reset_classifier``) on converted models."""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConversionError
from ...models.sources import timm_input_size
from ...nn import (
    BcosBatchNorm2d,
    BcosConv2d,
    BcosGELU,
    BcosGlobalResponseNorm,
    BcosGroupNorm,
    BcosHardswish,
    BcosLayerNorm,
    BcosLayerNorm2d,
    BcosMish,
    BcosQuickGELU,
    BcosSiLU,
    BcosSquaredReLU,
)
from ..options import ConversionOptions
from ..rules import (
    Rule,
    RuleContext,
    UnsupportedModule,
    activation,
    conv2d,
    converted_children,
    groupnorm,
    keep,
    layernorm,
    layernorm2d,
    linear,
    plain_conv2d,
    squeeze_excitation,
    with_bias,
)
from . import Family, Support

__all__ = [
    "FAMILY",
    "BcosBatchNormAct2d",
    "BcosConv2dSame",
    "BcosGroupNormAct",
    "BcosLayerNormAct",
    "BcosLayerNormAct2d",
    "Scale",
    "is_timm_classifier",
    "reset_classifier",
]


def _pooled(block: nn.Module, x: Tensor) -> Tensor:
    pooled = x.mean((2, 3), keepdim=True)
    if getattr(block, "add_maxpool", False):
        pooled = 0.5 * pooled + 0.5 * x.amax((2, 3), keepdim=True)
    return pooled


class _DropAct:
    """timm's fused norm-activation modules: the norm, then the ``drop`` and ``act`` children
    kept under their names."""

    drop: nn.Module
    act: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))  # type: ignore[misc]


class BcosBatchNormAct2d(_DropAct, BcosBatchNorm2d):
    """timm's ``BatchNormAct2d`` as an uncentered batch norm, then its dropout and activation."""


class BcosLayerNormAct(_DropAct, BcosLayerNorm):
    """timm's ``LayerNormAct`` as a B-cos layer norm, then its dropout and activation."""


class BcosGroupNormAct(_DropAct, BcosGroupNorm):
    """timm's ``GroupNormAct`` and ``GroupNorm1Act`` (BiT's and the hybrid ViTs' stems) as a
    B-cos group norm, then its dropout and activation."""


class BcosLayerNormAct2d(_DropAct, BcosLayerNorm2d):
    """timm's ``LayerNormAct2d`` (ViTamin's stem) as a B-cos channel layer norm, then its
    dropout and activation."""


def _timm_batchnorm_act(module: nn.Module, context: RuleContext) -> nn.Module:
    act = context.convert_child(module.act, "act")
    norm = BcosBatchNormAct2d.from_batchnorm(module, bias=context.options.keep_bias)
    norm.drop, norm.act = module.drop, act
    return norm


def _norm_act(norm: Rule, fused: type[nn.Module]) -> Rule:
    """The rule of a fused layer norm and activation: ``norm``'s result, as ``fused`` (a
    subclass that adds no state), with the module's dropout and converted activation."""

    def rule(module: nn.Module, context: RuleContext) -> nn.Module:
        act = context.convert_child(module.act, "act")
        converted = norm(module, context)
        converted.__class__ = fused
        converted.drop, converted.act = module.drop, act
        return converted

    return rule


def global_response_norm(module: nn.Module, context: RuleContext) -> nn.Module:
    """timm's ``GlobalResponseNorm`` (ConvNeXt V2) -> :class:`~bcosify.nn.BcosGlobalResponseNorm`:
    its normaliser detached when explaining, its bias (beta) dropped unless ``keep_bias``."""
    keep_bias = context.options.keep_bias
    norm = BcosGlobalResponseNorm(
        module.weight.shape[0],
        module.eps,
        channels_last=module.channel_dim == -1,
        bias=keep_bias,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    norm.weight.data.copy_(module.weight.detach())
    if keep_bias:
        norm.bias.data.copy_(module.bias.detach())
    return norm


def star_relu(module: nn.Module, context: RuleContext) -> nn.Module:
    """MetaFormer's ``StarReLU`` (``scale * relu(x) ** 2 + bias``) ->
    :class:`~bcosify.nn.BcosSquaredReLU` (gate ``scale * relu(x)`` detached when explaining),
    its bias dropped unless ``keep_bias``."""
    if context.options.activations == "identity":
        return nn.Identity()
    return with_bias(BcosSquaredReLU(module.scale), module.bias, context.options, -1)


def max_pool_same(module: nn.Module, context: RuleContext) -> nn.Module:
    """timm's ``MaxPool2dSame`` (pads with -inf, then a max pool: a selection) kept; with
    ``maxpool="avg"`` timm's ``AvgPool2dSame`` of the same window."""
    if context.options.maxpool == "keep":
        return module
    if module.dilation not in (1, (1, 1)):
        raise UnsupportedModule("a dilated max pool has no average-pool counterpart")
    from timm.layers.pool2d_same import AvgPool2dSame

    return AvgPool2dSame(module.kernel_size, module.stride, ceil_mode=module.ceil_mode)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one dimension (before, after): the output has
    ``ceil(size / stride)`` positions, the odd pixel padded after.

    Example:
        >>> same_padding(64, 3, 2, 1), same_padding(7, 3, 1, 1)
        ((0, 1), (1, 1))
    """
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class BcosConv2dSame(BcosConv2d):
    """timm's ``Conv2dSame`` (TensorFlow ports: tf_efficientnet, NASNet) as a B-cos convolution
    that pads its input as TensorFlow's 'same' does, from the input's size, then convolves
    (zeros added: the padding is linear, as a plain convolution's)."""

    pads_in_forward = True  # its input is padded here: a per-layer fit cannot unfold it

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = (
            same_padding(size, k, s, d)
            for size, k, s, d in zip(
                x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True
            )
        )
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _padded_convolutions() -> tuple[type[nn.Module], ...]:
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return ()
    return (Conv2dSame, BcosConv2dSame)


def conv2d_same(module: nn.Module, context: RuleContext) -> nn.Module:
    """timm's ``Conv2dSame`` -> :class:`BcosConv2dSame` (its bias a named constant with
    ``keep_bias``, after the padded convolution, as the original adds it)."""
    converted = conv2d(module, context)
    getattr(converted, "layer", converted).__class__ = BcosConv2dSame
    return converted


class Scale(nn.Module):
    """``scale * x``: HGNet's ``LearnableAffineBlock`` without its offset."""

    def __init__(self, scale: Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


def learnable_affine(module: nn.Module, context: RuleContext) -> nn.Module:
    """HGNet-V2's ``LearnableAffineBlock`` (``scale * x + bias``, scalars) -> :class:`Scale`,
    its bias a constant under ``keep_bias`` and dropped otherwise."""
    return with_bias(Scale(module.scale), module.bias, context.options, -1)


# the gates of timm's squeeze-and-excitation blocks (module level: a converted model pickles)
def _effective_se(se: nn.Module, x: Tensor) -> Tensor:
    return se.gate(se.fc(_pooled(se, x)))


def _se_module(se: nn.Module, x: Tensor) -> Tensor:
    return se.gate(se.fc2(se.act(se.bn(se.fc1(_pooled(se, x))))))


def _efficientnet_se(se: nn.Module, x: Tensor) -> Tensor:
    return se.gate(se.conv_expand(se.act1(se.conv_reduce(_pooled(se, x)))))


def _rules() -> dict[type[nn.Module], Rule]:
    try:
        import timm.layers as layers
        from timm.layers import activations, activations_me
        from timm.layers.grn import GlobalResponseNorm
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
        from timm.models import hgnet, metaformer
        from timm.models._efficientnet_blocks import SqueezeExcite
        from timm.models.vgg import ConvMlp
    except ImportError:
        return {}

    return {
        layers.LayerNorm2d: layernorm2d,
        layers.BatchNormAct2d: _timm_batchnorm_act,
        layers.LayerNormAct: _norm_act(layernorm, BcosLayerNormAct),
        layers.LayerNormAct2d: _norm_act(layernorm2d, BcosLayerNormAct2d),
        layers.GroupNormAct: _norm_act(groupnorm, BcosGroupNormAct),
        layers.GroupNorm1Act: _norm_act(groupnorm, BcosGroupNormAct),
        BcosGroupNormAct: keep,
        BcosBatchNormAct2d: keep,
        BcosLayerNormAct: keep,
        BcosLayerNormAct2d: keep,
        layers.SEModule: squeeze_excitation(_se_module),
        layers.EffectiveSEModule: squeeze_excitation(_effective_se),
        SqueezeExcite: squeeze_excitation(_efficientnet_se),
        layers.DropPath: keep,
        layers.Conv2dSame: conv2d_same,
        BcosConv2dSame: keep,
        layers.LayerNorm: layernorm,
        GlobalResponseNorm: global_response_norm,
        # subclasses of torch.nn's norms and linear layer that call the same function on their
        # own parameters (without a bias, or in float32): converted as their base class
        layers.GroupNorm: groupnorm,
        layers.GroupNorm1: groupnorm,
        metaformer.GroupNorm1NoBias: groupnorm,
        layers.LayerNormFp32: layernorm,
        metaformer.LayerNormNoBias: layernorm,
        layers.LayerNorm2dFp32: layernorm2d,
        metaformer.LayerNorm2dNoBias: layernorm2d,
        layers.Linear: linear,
        metaformer.StarReLU: star_relu,
        hgnet.LearnableAffineBlock: learnable_affine,
        # 'same' padding inside forward (TensorFlow ports): zeros before an average, -inf
        # (never selected) before a maximum: both stay what they are
        AvgPool2dSame: keep,
        MaxPool2dSame: max_pool_same,
        Scale: keep,
        # timm's own activation modules (its create_act_layer picks them)
        activations.GELU: activation(lambda m: BcosGELU()),
        activations.GELUTanh: activation(lambda m: BcosGELU("tanh")),
        activations.QuickGELU: activation(lambda m: BcosQuickGELU()),
        activations.Swish: activation(lambda m: BcosSiLU()),
        activations_me.SwishMe: activation(lambda m: BcosSiLU()),
        activations.Mish: activation(lambda m: BcosMish()),
        activations_me.MishMe: activation(lambda m: BcosMish()),
        activations.HardSwish: activation(lambda m: BcosHardswish()),
        activations_me.HardSwishMe: activation(lambda m: BcosHardswish()),
        # VGG's head: it pools up to its kernel size when the input is small (a branch on the
        # shape, which torch.fx cannot trace)
        ConvMlp: converted_children,
    }


def prepare(model: nn.Module) -> list[str]:
    """timm's preparation of ``model`` (a copy): multi-branch blocks in their inference form,
    plain convolutions for weight-standardised ones, and attention switched to its fused code
    path; returns notes."""
    return single_branches(model) + plain_convolutions(model) + prepare_attention(model)


def single_branches(model: nn.Module) -> list[str]:
    """Switch timm's re-parameterisable multi-branch blocks (RepVGG and MobileOne style:
    FastViT, MobileOne, RepGhost) in ``model`` (a copy) to their inference form, one
    convolution that computes the sum of the branches (their own ``reparameterize`` or
    ``switch_to_deploy``, as ``timm.utils.reparameterize_model`` calls them); returns a note.
    The function is the same in evaluation mode; a stem that was several branches on the
    image becomes one convolution that can take the encoded input.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("fastvit_t8", num_classes=3).eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> before = model(x)
        >>> notes = single_branches(model)
        >>> bool(torch.allclose(model(x), before, atol=1e-4)), model.stem[0].reparam_conv
        (True, Conv2d(3, 48, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)))
    """
    switched = []
    for name, module in list(model.named_modules()):
        if not type(module).__module__.startswith("timm."):
            continue
        switch = getattr(module, "reparameterize", None) or getattr(
            module, "switch_to_deploy", None
        )
        if callable(switch):
            switch()
            switched.append(name)
    if not switched:
        return []
    return [
        f"{len(switched)} multi-branch block(s) switched to their inference form (one "
        f"convolution for the sum of the branches, the same function), e.g. '{switched[0]}'"
    ]


def plain_convolutions(model: nn.Module) -> list[str]:
    """Replace timm's weight-standardised convolutions (NF-Nets, BiT) in ``model`` (a copy) by
    plain ``nn.Conv2d`` with the weight they compute from their parameters (the same function
    at inference), so that the first one can take the encoded input and every one becomes a
    B-cos convolution; returns a note. Those that pad inside forward are left (and refused).

    Example:
        >>> import timm
        >>> model = timm.create_model("test_nfnet", num_classes=3)
        >>> notes = plain_convolutions(model)
        >>> type(model.stem.conv1).__name__
        'Conv2d'
    """
    try:
        from timm.layers import (
            Conv2dSame,
            ScaledStdConv2d,
            ScaledStdConv2dSame,
            StdConv2d,
            StdConv2dSame,
        )
    except ImportError:
        return []
    standardised = (StdConv2d, ScaledStdConv2d, StdConv2dSame, ScaledStdConv2dSame)
    found = [(n, m) for n, m in model.named_modules() if type(m) in standardised]
    replaced = []
    for name, module in found:
        try:  # the 'same' variants pad in forward as Conv2dSame does
            plain = plain_conv2d(module, Conv2dSame)
        except UnsupportedModule:
            continue  # computes something else: refused with the reason
        owner, _, child = name.rpartition(".")
        setattr(model.get_submodule(owner), child, plain)
        replaced.append(name)
    if not replaced:
        return []
    return [
        f"{len(replaced)} weight-standardised convolution(s) replaced by nn.Conv2d with the "
        f"weight they compute (the same function), e.g. '{replaced[0]}'"
    ]


def prepare_attention(model: nn.Module) -> list[str]:
    """Switch ``model`` (a copy) to the code paths the converter recognises; returns notes.

    timm's attention modules compute the same attention either explicitly (softmax of
    ``q k^T``) or with ``F.scaled_dot_product_attention``, chosen by their ``fused_attn`` flag.
    Only the fused call is recognised as attention (and becomes a
    :class:`~bcosify.nn.DynamicAttention`), so the flag is set on every module that has it.

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
        >>> model.blocks[0].attn.fused_attn = False
        >>> notes = prepare_attention(model)
        >>> len(notes), model.blocks[0].attn.fused_attn
        (1, True)
    """
    switched = [
        name
        for name, module in model.named_modules()
        if getattr(module, "fused_attn", None) is False
    ]
    for name in switched:
        model.get_submodule(name).fused_attn = True
    if not switched:
        return []
    return [
        f"{len(switched)} attention module(s) switched to F.scaled_dot_product_attention "
        f"(fused_attn=True, the same function), e.g. '{switched[0]}'"
    ]


def traced_methods(module: nn.Module, path: str) -> list[tuple[str, dict[str, Any]]] | None:
    """The methods of ``module`` the converter traces, with arguments to fix.

    A timm classifier converted as a whole: its ``forward`` is
    ``forward_head(forward_features(x))``, and users call both halves, so each is traced and
    rewritten on its own (``forward_head`` for ``pre_logits`` False and True) and ``forward``
    keeps its code. None (``forward``, the default) for anything else.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> [name for name, _ in traced_methods(model, "")]
        ['forward_features', 'forward_head', 'forward_head']
        >>> traced_methods(model.layer1, "layer1") is None
        True
    """
    if not path and is_timm_classifier(module):
        return [
            ("forward_features", {}),
            ("forward_head", {"pre_logits": True}),
            ("forward_head", {"pre_logits": False}),  # last: the head is searched here
        ]
    return None


def is_timm_classifier(module: nn.Module) -> bool:
    """A timm model with ``forward_features`` and ``forward_head(x, pre_logits)``."""
    cls = getattr(type(module), "_bcosify_original", type(module))
    head = getattr(cls, "forward_head", None)
    return (
        cls.__module__.startswith("timm.")
        and callable(getattr(cls, "forward_features", None))
        and callable(head)
        and "pre_logits" in inspect.signature(head).parameters
    )


def reset_classifier(
    network: nn.Module, options: ConversionOptions, num_classes: int, *args: Any, **kwargs: Any
) -> None:
    """timm's ``reset_classifier`` on a converted timm network, then its head converted anew.

    timm builds the new head from plain modules (an ``nn.Linear``, a new pooling); its own
    ``forward_head`` is traced again on them and converted as at conversion (the linear layer a
    B-cos layer before the pooling), the rest of the network untouched.

    Raises:
        ConversionError: if the new head has parts without a dynamic-linear form.
    """
    from ..graph import GraphProblems
    from ..table import default_rules
    from ..tracing import replace_methods
    from ..tree import convert_tree

    cls = type(network)
    original = getattr(cls, "_bcosify_original", cls)
    if not hasattr(original, "reset_classifier") or not is_timm_classifier(network):
        raise ConversionError(f"{cls.__name__} is not a timm classifier with reset_classifier")
    original.reset_classifier(network, num_classes, *args, **kwargs)
    # the original forward_head, on top of the converted forward_features
    replace_methods(network, {"forward_head": original.forward_head})
    problems = GraphProblems()

    def head_only(module: nn.Module, path: str) -> list[tuple[str, dict[str, Any]]]:
        return (traced_methods(module, path) or [])[1:] if not path else [("forward", {})]

    convert_tree(network, default_rules(), options, problems, head_only)
    if problems.lines:
        raise ConversionError(
            "the new classifier has parts without a dynamic-linear form:\n"
            + "\n".join(problems.lines)
        )


_VIT = "class token and positional embedding"


FAMILY = Family(
    name="timm",
    rules=_rules,
    prepare=prepare,
    methods=traced_methods,
    input_size=timm_input_size,
    padded_convolutions=_padded_convolutions,
    supported=(
        Support("timm", "resnet18", "exact", "classifier applied before the global pooling"),
        Support("timm", "convnext_atto", "exact", "classifier after pooling (its norm)"),
        Support("timm", "efficientnet_b0", "exact", "squeeze-and-excitation gates detached"),
        Support("timm", "vit_tiny_patch16_224", "exact", _VIT),
        Support("timm", "deit_tiny_patch16_224", "exact", _VIT),
        Support("timm", "deit_tiny_distilled_patch16_224", "exact", _VIT + ", distillation token"),
        Support("timm", "vit_small_patch16_224 (avg pool)", "exact", "head applied per token"),
        Support("timm", "vit_small_patch14_reg4_dinov2", "exact", _VIT + ", register tokens"),
        Support(
            "timm",
            "eva02_tiny_patch14_224",
            "exact",
            "SwiGLU gates detached, rotary embedding on detached queries and keys",
        ),
        Support("timm", "vit_base_patch16_rope_224", "exact", "rotary position embedding"),
        Support("timm", "convnextv2_atto", "exact", "global response norm, normaliser detached"),
        Support(
            "timm",
            "tf_efficientnet_b0",
            "exact",
            "TensorFlow 'same' padding (Conv2dSame) computed from the input's size",
        ),
    ),
)
