"""Per-family glue: rule-table entries for torchvision and timm building blocks.

Only what the generic rules cannot see: squeeze-and-excitation blocks (``x * gate(x)``, whose
gate is detached in explanation mode), the ``LayerNorm2d`` variants, stochastic depth, and timm's
fused ``BatchNormAct2d``. timm entries are added only when timm is installed.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..nn import DetachedGate
from .rules import Rule, RuleContext, UnsupportedModule, batchnorm2d, keep, layernorm2d

__all__ = ["family_rules"]

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


def _torchvision_rules() -> dict[type[nn.Module], Rule]:
    from torchvision.models.convnext import LayerNorm2d
    from torchvision.ops import SqueezeExcitation, StochasticDepth

    return {
        SqueezeExcitation: squeeze_excitation(lambda se, x: se._scale(x)),
        StochasticDepth: keep,
        LayerNorm2d: layernorm2d,
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
    }


def family_rules() -> dict[type[nn.Module], Rule]:
    """The rule-table entries for the torchvision and (if installed) timm families."""
    return {**_torchvision_rules(), **_timm_rules()}
