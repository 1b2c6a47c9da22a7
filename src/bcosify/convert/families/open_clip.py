"""open_clip: the image towers of its CLIP models (``ModifiedResNet`` with attention pooling,
``VisionTransformer``), its ``LayerNorm`` subclasses and ``QuickGELU``."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...nn import BcosAttentionPool2d, BcosQuickGELU
from ..rules import Rule, RuleContext, activation, layernorm
from ..rules import qkv_projection as qkv_projection_rule
from . import Family, Support, Tower

__all__ = ["FAMILY", "attention_pool"]


def attention_pool(module: nn.Module, context: RuleContext) -> nn.Module:
    """open_clip's ``AttentionPool2d`` -> :class:`~bcosify.nn.BcosAttentionPool2d`.

    The query, key and value layers follow the ``qkv_projection`` option, ``c_proj`` the table.

    Example:
        >>> from open_clip.modified_resnet import AttentionPool2d
        >>> from bcosify.convert import ConversionOptions
        >>> context = RuleContext(ConversionOptions((0.5,), (0.5,)), "attnpool", lambda m, n: m)
        >>> type(attention_pool(AttentionPool2d(2, 16, 2, 8), context)).__name__
        'BcosAttentionPool2d'
    """
    projections = [
        qkv_projection_rule(getattr(module, name), context)
        for name in ("q_proj", "k_proj", "v_proj")
    ]
    return BcosAttentionPool2d(
        *projections,
        context.convert_child(module.c_proj, "c_proj"),
        module.positional_embedding,
        module.num_heads,
    )


def _rules() -> dict[type[nn.Module], Rule]:
    try:
        from open_clip.modified_resnet import AttentionPool2d
        from open_clip.transformer import LayerNorm, LayerNormFp32, QuickGELU
    except ImportError:
        return {}
    return {
        AttentionPool2d: attention_pool,
        # both only cast around F.layer_norm (for fp16 training): the norm is nn.LayerNorm's
        LayerNorm: layernorm,
        LayerNormFp32: layernorm,
        QuickGELU: activation(lambda m: BcosQuickGELU()),
    }


def _towers() -> dict[type[nn.Module], Tower]:
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer
    except ImportError:
        return {}

    def visual(model: Any) -> nn.Module:
        return model.visual

    def itself(model: Any) -> nn.Module:
        return model

    return {
        CLIP: ("its image tower 'visual'", visual),
        CustomTextCLIP: ("its image tower 'visual'", visual),
        ModifiedResNet: ("the image tower", itself),
        VisionTransformer: ("the image tower", itself),
    }


FAMILY = Family(
    name="open_clip",
    rules=_rules,
    towers=_towers,
    supported=(
        Support("open_clip", "RN50 (image tower)", "exact", "attention pooling, text tower kept"),
        Support("open_clip", "ViT-B-32 (image tower)", "exact", "x @ proj as a B-cos layer"),
    ),
)
