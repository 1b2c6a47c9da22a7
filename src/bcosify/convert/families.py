"""Per-family glue: rule-table entries for torchvision and timm building blocks.

Only what the generic rules cannot see: squeeze-and-excitation blocks (``x * gate(x)``, whose
gate is detached in explanation mode), the ``LayerNorm2d`` variants, stochastic depth, timm's
fused ``BatchNormAct2d`` and ``LayerNorm``, and the switch of timm attention to its fused path
before tracing. timm entries are added only when timm is installed. CLIP models (open_clip,
transformers) have their glue in :mod:`bcosify.convert.clip_rules`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..nn import BcosWindowAttention, DetachedGate
from .rules import (
    Rule,
    RuleContext,
    UnsupportedModule,
    batchnorm2d,
    keep,
    layernorm,
    layernorm2d,
    qkv_projection,
)

__all__ = ["family_rules", "prepare_for_tracing"]

GateFunction = Callable[[nn.Module, Tensor], Tensor]


class _Gate(nn.Module):
    """The gate of a squeeze-and-excitation block, computed by the block's own layers."""

    def __init__(self, block: nn.Module, gate: GateFunction) -> None:
        super().__init__()
        self.block = block
        self._gate = gate

    def forward(self, x: Tensor) -> Tensor:
        return self._gate(self.block, x)


def squeeze_excitation(gate: GateFunction) -> Rule:
    """A rule that turns a block computing ``x * gate(x)`` into a :class:`DetachedGate`.

    The gate keeps the block's layers (biases included): it scales the input, it is not on the
    explained path.
    """

    def rule(module: nn.Module, context: RuleContext) -> nn.Module:
        return DetachedGate(_Gate(module, gate))

    return rule


def _pooled(block: nn.Module, x: Tensor) -> Tensor:
    pooled = x.mean((2, 3), keepdim=True)
    if getattr(block, "add_maxpool", False):
        pooled = 0.5 * pooled + 0.5 * x.amax((2, 3), keepdim=True)
    return pooled


def _swin_attention(module: nn.Module, context: RuleContext) -> nn.Module:
    """torchvision's ``ShiftedWindowAttention`` (Swin V1) -> :class:`BcosWindowAttention`."""
    return BcosWindowAttention(
        qkv_projection(module.qkv, context),
        context.convert_child(module.proj, "proj"),
        module.relative_position_bias_table.detach(),
        module.relative_position_index,
        module.window_size,
        module.shift_size,
        module.num_heads,
        attention_dropout=module.attention_dropout,
        dropout=module.dropout,
    )


def _torchvision_rules() -> dict[type[nn.Module], Rule]:
    from torchvision.models.convnext import LayerNorm2d
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    from torchvision.ops import SqueezeExcitation, StochasticDepth

    return {
        SqueezeExcitation: squeeze_excitation(lambda se, x: se._scale(x)),
        StochasticDepth: keep,
        LayerNorm2d: layernorm2d,
        ShiftedWindowAttention: _swin_attention,
    }


def _timm_batchnorm_act(module: nn.Module, context: RuleContext) -> nn.Module:
    """timm's ``BatchNormAct2d``: batch norm, dropout and activation fused in one module."""
    act = context.convert_child(module.act, "act")
    norm = batchnorm2d(module, context)
    return nn.Sequential(norm, module.drop, act)


def _timm_rules() -> dict[type[nn.Module], Rule]:
    try:
        import timm.layers as layers
        from timm.models._efficientnet_blocks import SqueezeExcite
    except ImportError:
        return {}

    def effective_se(se: nn.Module, x: Tensor) -> Tensor:
        return se.gate(se.fc(_pooled(se, x)))

    def se_module(se: nn.Module, x: Tensor) -> Tensor:
        return se.gate(se.fc2(se.act(se.bn(se.fc1(_pooled(se, x))))))

    def efficientnet_se(se: nn.Module, x: Tensor) -> Tensor:
        return se.gate(se.conv_expand(se.act1(se.conv_reduce(_pooled(se, x)))))

    def conv2d_same(module: nn.Module, context: RuleContext) -> nn.Module:
        raise UnsupportedModule(
            "pads asymmetrically inside forward ('same' padding of TensorFlow ports); "
            "use the PyTorch-native variant of the model"
        )

    return {
        layers.LayerNorm2d: layernorm2d,
        layers.BatchNormAct2d: _timm_batchnorm_act,
        layers.SEModule: squeeze_excitation(se_module),
        layers.EffectiveSEModule: squeeze_excitation(effective_se),
        SqueezeExcite: squeeze_excitation(efficientnet_se),
        layers.DropPath: keep,
        layers.Conv2dSame: conv2d_same,
        layers.LayerNorm: layernorm,
    }


def family_rules() -> dict[type[nn.Module], Rule]:
    """The rule-table entries for the torchvision and (if installed) timm, open_clip and
    transformers CLIP families (see :mod:`bcosify.convert.clip_rules`)."""
    from .clip_rules import clip_rules

    return {**_torchvision_rules(), **_timm_rules(), **clip_rules()}


def prepare_for_tracing(model: nn.Module) -> list[str]:
    """Switch ``model`` (a copy) to the code paths the converter recognises; returns notes.

    timm's attention modules compute the same attention either explicitly (softmax of
    ``q k^T``) or with ``F.scaled_dot_product_attention``, chosen by their ``fused_attn`` flag.
    Only the fused call is recognised as attention (and becomes a
    :class:`~bcosify.nn.DynamicAttention`), so the flag is set on every module that has it.

    Example:
        >>> import timm
        >>> model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1)
        >>> model.blocks[0].attn.fused_attn = False
        >>> notes = prepare_for_tracing(model)
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
