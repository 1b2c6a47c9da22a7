"""torchvision: squeeze-and-excitation, ``LayerNorm2d``, stochastic depth, Swin attention."""

from __future__ import annotations

from torch import Tensor, nn

from ...nn import BcosWindowAttention
from ..rules import Rule, RuleContext, keep, layernorm2d, qkv_projection, squeeze_excitation
from . import Family, Support

__all__ = ["FAMILY"]


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


def _squeeze_excitation_scale(block: nn.Module, x: Tensor) -> Tensor:
    return block._scale(x)


def _rules() -> dict[type[nn.Module], Rule]:
    from torchvision.models.convnext import LayerNorm2d
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    from torchvision.ops import SqueezeExcitation, StochasticDepth

    return {
        SqueezeExcitation: squeeze_excitation(_squeeze_excitation_scale),
        StochasticDepth: keep,
        LayerNorm2d: layernorm2d,
        ShiftedWindowAttention: _swin_attention,
    }


_CNN = "classifier applied before the global pooling"
FAMILY = Family(
    name="torchvision",
    rules=_rules,
    supported=(
        *(
            Support("torchvision", arch, "exact", _CNN)
            for arch in (
                "resnet18",
                "resnet50",
                "resnext50_32x4d",
                "wide_resnet50_2",
                "densenet121",
                "efficientnet_b0",
                "regnet_y_400mf",
            )
        ),
        Support("torchvision", "vgg11_bn", "exact", "classifier after pooling (7 x 7 pool)"),
        Support("torchvision", "convnext_tiny", "exact", "classifier after pooling (its norm)"),
        Support(
            "torchvision",
            "mobilenet_v3_small",
            "exact",
            "squeeze-and-excitation gates detached; classifier MLP after pooling",
        ),
        Support("torchvision", "vit_b_16", "exact", "class token and positional embedding"),
        Support("torchvision", "swin_t", "exact, slow test", "window attention"),
        Support(
            "torchvision",
            "swin_v2_t",
            "unsupported",
            "cosine attention with a position bias from an MLP",
        ),
    ),
)
