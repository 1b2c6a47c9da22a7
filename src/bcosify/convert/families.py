"""Per-family glue: rule-table entries for torchvision and timm building blocks.

Only what the generic rules cannot see: squeeze-and-excitation blocks (``x * gate(x)``, whose
gate is detached in explanation mode), the ``LayerNorm2d`` variants, stochastic depth, timm's
fused ``BatchNormAct2d`` and ``LayerNorm``, and the switch of timm attention to its fused path
before tracing. timm entries are added only when timm is installed. CLIP models (open_clip,
transformers) have their glue in :mod:`bcosify.convert.clip_rules`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..errors import ConversionError
from ..nn import BcosBatchNorm2d, BcosWindowAttention, DetachedGate
from .options import ConversionOptions
from .rules import (
    Rule,
    RuleContext,
    UnsupportedModule,
    keep,
    layernorm,
    layernorm2d,
    qkv_projection,
)

__all__ = ["family_rules", "prepare_for_tracing", "reset_timm_classifier", "traced_methods"]

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
        cls = type(module)

        def forward(self: nn.Module, x: Tensor) -> Tensor:
            return x * self.detach_if_explaining(gate(self, x))

        module.__class__ = type(
            f"Bcos{cls.__name__}",
            (DetachedGate, cls),
            {
                "forward": forward,
                "__module__": cls.__module__,
                "_bcosify_original": cls,
                "_bcosify_converted": True,
            },
        )
        return module

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


class BcosBatchNormAct2d(BcosBatchNorm2d):
    """timm's ``BatchNormAct2d`` (batch norm, dropout and activation fused in one module) as an
    uncentered batch norm that keeps the ``drop`` and ``act`` children under their names."""

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(super().forward(x)))


def _timm_batchnorm_act(module: nn.Module, context: RuleContext) -> nn.Module:
    act = context.convert_child(module.act, "act")
    norm = BcosBatchNormAct2d.from_batchnorm(module, bias=context.options.keep_bias)
    norm.drop, norm.act = module.drop, act
    return norm


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
        BcosBatchNormAct2d: keep,
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


def traced_methods(module: nn.Module, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The methods of ``module`` the converter traces, with arguments to fix.

    ``forward``, except for a timm classifier converted as a whole: its ``forward`` is
    ``forward_head(forward_features(x))``, and users call both halves, so each is traced and
    rewritten on its own (``forward_head`` for ``pre_logits`` False and True) and ``forward``
    keeps its code.

    Example:
        >>> import timm
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> [name for name, _ in traced_methods(model, "")]
        ['forward_features', 'forward_head', 'forward_head']
        >>> traced_methods(model.layer1, "layer1")
        [('forward', {})]
    """
    if not path and is_timm_classifier(module):
        return [
            ("forward_features", {}),
            ("forward_head", {"pre_logits": True}),
            ("forward_head", {"pre_logits": False}),  # last: the head is searched here
        ]
    return [("forward", {})]


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


def reset_timm_classifier(
    network: nn.Module, options: ConversionOptions, num_classes: int, *args: Any, **kwargs: Any
) -> None:
    """timm's ``reset_classifier`` on a converted timm network, then its head converted anew.

    timm builds the new head from plain modules (an ``nn.Linear``, a new pooling); its own
    ``forward_head`` is traced again on them and converted as at conversion (the linear layer a
    B-cos layer before the pooling), the rest of the network untouched.

    Raises:
        ConversionError: if the new head has parts without a dynamic-linear form.
    """
    from .graph import GraphProblems
    from .rules import default_rules
    from .tracing import replace_methods
    from .tree import convert_tree

    cls = type(network)
    original = getattr(cls, "_bcosify_original", cls)
    if not hasattr(original, "reset_classifier") or not is_timm_classifier(network):
        raise ConversionError(f"{cls.__name__} is not a timm classifier with reset_classifier")
    original.reset_classifier(network, num_classes, *args, **kwargs)
    # the original forward_head, on top of the converted forward_features
    replace_methods(network, {"forward_head": original.forward_head})
    problems = GraphProblems()

    def head_only(module: nn.Module, path: str) -> list[tuple[str, dict[str, Any]]]:
        return traced_methods(module, path)[1:] if not path else [("forward", {})]

    convert_tree(network, default_rules(), options, problems, head_only)
    if problems.lines:
        raise ConversionError(
            "the new classifier has parts without a dynamic-linear form:\n"
            + "\n".join(problems.lines)
        )
