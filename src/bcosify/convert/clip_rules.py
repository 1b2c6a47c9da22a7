"""Per-family glue for CLIP models: rule-table entries and the image tower to convert.

- Rule-table entries for open_clip (``AttentionPool2d`` of its ResNets, its ``LayerNorm``
  subclasses, ``QuickGELU``) and transformers (``CLIPAttention``, its activation modules).
- :func:`image_tower`: a whole CLIP model is converted through its image tower. A tower
  outputs embeddings, not logits: it gets no logit bias. transformers' vision modules branch on
  image sizes and return output objects, which torch.fx cannot trace: their ``forward`` is
  replaced by the same computation on tensors (:func:`hf_traceable`), module tree kept.

Entries are added only for the libraries that are installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConversionError
from ..models.clip import HFImageFeatures
from ..nn import BcosAttentionPool2d, BcosGELU, BcosMultiheadAttention, BcosQuickGELU
from .rules import Rule, RuleContext, UnsupportedModule, activation, keep, layernorm
from .rules import qkv_projection as qkv_projection_rule
from .tracing import replace_methods

__all__ = [
    "HFImageTower",
    "HFSelfAttention",
    "attention_pool",
    "clip_rules",
    "hf_attention",
    "hf_traceable",
    "image_tower",
]


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


class HFSelfAttention(BcosMultiheadAttention):
    """A transformers ``CLIPAttention`` as a :class:`~bcosify.nn.BcosMultiheadAttention`.

    Keeps the library's calling convention (``hidden_states``, ``attention_mask``; returns
    ``(output, None)``), so the encoder layer around it runs unchanged, and the original's
    ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` under their names.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> attention = HFSelfAttention(*(nn.Linear(8, 8) for _ in range(4)), num_heads=2,
        ...                             batch_first=True)
        >>> out, weights = attention(torch.randn(2, 5, 8))
        >>> out.shape, weights
        (torch.Size([2, 5, 8]), None)
    """

    def forward(  # type: ignore[override]
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> tuple[Tensor, None]:
        out, _ = super().forward(
            hidden_states,
            hidden_states,
            hidden_states,
            attn_mask=attention_mask,
            need_weights=False,
        )
        return out, None


def hf_attention(module: nn.Module, context: RuleContext) -> nn.Module:
    """transformers' ``CLIPAttention`` -> :class:`HFSelfAttention` (queries and keys detached
    when explaining; projections as the ``qkv_projection`` option says).

    Example:
        >>> from transformers import CLIPVisionConfig
        >>> from transformers.models.clip.modeling_clip import CLIPAttention
        >>> from bcosify.convert import ConversionOptions
        >>> context = RuleContext(ConversionOptions((0.5,), (0.5,)), "attn", lambda m, n: m)
        >>> config = CLIPVisionConfig(hidden_size=16, num_attention_heads=2)
        >>> type(hf_attention(CLIPAttention(config), context)).__name__
        'HFSelfAttention'
    """
    if not math.isclose(module.scale, module.head_dim**-0.5):
        raise UnsupportedModule(
            f"scales attention scores by {module.scale}, not head_dim ** -0.5; give it a rule"
        )
    return HFSelfAttention(
        *(qkv_projection_rule(getattr(module, n), context) for n in ("q_proj", "k_proj", "v_proj")),
        context.convert_child(module.out_proj, "out_proj"),
        module.num_heads,
        dropout=module.dropout,
        batch_first=True,
    )


def _open_clip_rules() -> dict[type[nn.Module], Rule]:
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


def _transformers_rules() -> dict[type[nn.Module], Rule]:
    try:
        from transformers.activations import (
            GELUActivation,
            GELUTanh,
            NewGELUActivation,
            QuickGELUActivation,
        )
        from transformers.models.clip.modeling_clip import CLIPAttention
    except ImportError:
        return {}
    return {
        CLIPAttention: hf_attention,
        QuickGELUActivation: activation(lambda m: BcosQuickGELU()),
        GELUActivation: activation(lambda m: BcosGELU()),
        # the tanh approximation, in C (GELUTanh) or written out (NewGELUActivation)
        GELUTanh: activation(lambda m: BcosGELU("tanh")),
        NewGELUActivation: activation(lambda m: BcosGELU("tanh")),
    }


def clip_rules() -> dict[type[nn.Module], Rule]:
    """Rule-table entries for open_clip and transformers CLIP modules (those installed).

    Example:
        >>> from open_clip.transformer import QuickGELU
        >>> QuickGELU in clip_rules()
        True
    """
    rules: dict[type[nn.Module], Rule] = {HFSelfAttention: keep}
    return {**rules, **_open_clip_rules(), **_transformers_rules()}


class HFImageTower(nn.Module):
    """The image tower of a transformers ``CLIPModel``: its ``vision_model`` and
    ``visual_projection``, under those names, without the text tower.

    Example:
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...          "num_attention_heads": 2}
        >>> clip = CLIPModel(CLIPConfig(text_config=tower, projection_dim=8,
        ...                             vision_config={**tower, "image_size": 16, "patch_size": 8}))
        >>> image = HFImageTower(clip.vision_model, clip.visual_projection)
        >>> image.vision_model is clip.vision_model
        True
    """

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values))


def _hf_embeddings(self: nn.Module, pixel_values: Tensor, interpolate_pos_encoding: bool = False):
    # the positional embedding as the table it is: the model looks it up at 0..L-1
    patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    cls = self.class_embedding.expand(patches.shape[0], 1, -1)
    return torch.cat([cls, patches], 1) + self.position_embedding.weight


def _hf_encoder(self: nn.Module, inputs_embeds: Tensor, attention_mask=None, **kwargs: Any):
    hidden = inputs_embeds
    for layer in self.layers:
        hidden = layer(hidden, attention_mask)
    return hidden


def _hf_vision_model(self: nn.Module, pixel_values: Tensor, *args: Any, **kwargs: Any):
    hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixel_values)))
    return self.post_layernorm(hidden[:, 0])  # pooler_output


def _hf_projected(self: nn.Module, pixel_values: Tensor, *args: Any, **kwargs: Any):
    return self.visual_projection(self.vision_model(pixel_values))


def hf_traceable(tower: nn.Module) -> list[str]:
    """Replace the ``forward`` of transformers' CLIP vision modules in ``tower`` (a copy) by
    the same computation on tensors, which torch.fx can trace; returns the replaced types.

    Embeddings, encoder and vision model then return tensors (the vision model its
    ``pooler_output``) instead of output objects; every module keeps its path and class.

    Raises:
        ConversionError: for a model that looks its positional embedding up at other positions
            than ``0..L-1``.
    """
    try:
        from transformers.models.clip import modeling_clip as clip
    except ImportError:
        return []
    forwards = {
        clip.CLIPVisionEmbeddings: _hf_embeddings,
        clip.CLIPEncoder: _hf_encoder,
        clip.CLIPVisionModel: _hf_vision_model,
        clip.CLIPVisionModelWithProjection: _hf_projected,
    }
    replaced = []
    for module in tower.modules():
        forward = forwards.get(type(module))
        if forward is None:
            continue
        if forward is _hf_embeddings:
            positions = torch.arange(module.position_embedding.num_embeddings)
            if not torch.equal(module.position_ids.flatten().cpu(), positions):
                raise ConversionError(
                    "the CLIP vision model looks its positional embedding up at positions "
                    "other than 0..L-1 (position_ids was changed); bcosify supports the "
                    "standard layout"
                )
        replaced.append(type(module).__name__)
        replace_methods(module, {"forward": forward})
    return replaced


def _tower_table() -> dict[type[nn.Module], tuple[str, Callable[[Any], nn.Module]]]:
    """Model type -> (what is converted, the module that computes it)."""
    table: dict[type[nn.Module], tuple[str, Callable[[Any], nn.Module]]] = {
        HFImageTower: ("the image tower", lambda m: m),
    }
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        table[CLIP] = table[CustomTextCLIP] = ("its image tower 'visual'", lambda m: m.visual)
        table[ModifiedResNet] = table[VisionTransformer] = ("the image tower", lambda m: m)
    except ImportError:
        pass
    try:
        from transformers import CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

        projected = "its image tower (vision_model, then visual_projection)"
        table[CLIPModel] = (
            projected,
            lambda m: HFImageTower(m.vision_model, m.visual_projection),
        )
        table[HFImageFeatures] = (
            projected,
            lambda m: HFImageTower(m.model.vision_model, m.model.visual_projection),
        )
        table[CLIPVisionModelWithProjection] = (projected, lambda m: m)
        table[CLIPVisionModel] = ("pooler_output of the vision model", lambda m: m)
    except ImportError:
        pass
    return table


def image_tower(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module to convert for a CLIP model or image tower, and a note; None for others.

    Example:
        >>> import open_clip
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = open_clip.CLIP(8, vision, text)
        >>> tower, note = image_tower(clip)
        >>> tower is clip.visual
        True
    """
    entry = _tower_table().get(type(model))
    if entry is None:
        return None
    what, build = entry
    tower = build(model)
    replaced = hf_traceable(tower)
    traceable = (
        f"; the forward of {', '.join(dict.fromkeys(replaced))} replaced by the same "
        "computation on tensors (traceable)"
        if replaced
        else ""
    )
    return tower, (
        f"{type(model).__name__}: converted {what} ({type(tower).__name__}), a CLIP image "
        "tower, whose output is the image embedding (no logit bias)" + traceable
    )
