"""transformers: CLIP and SigLIP image towers (``CLIPModel``, ``CLIPVisionModel(WithProjection)``,
``SiglipModel``, ``SiglipVisionModel`` with its attention-pooling head), their attention and
activation modules, and traceable forwards for their vision modules."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ConversionError
from ...models.clip import HFImageFeatures
from ...nn import BcosGELU, BcosMultiheadAttention, BcosQuickGELU
from ..rules import Rule, RuleContext, UnsupportedModule, activation, keep
from ..rules import qkv_projection as qkv_projection_rule
from ..tracing import replace_methods
from . import Family, Support, Tower

__all__ = ["FAMILY", "HFImageTower", "HFSelfAttention", "hf_attention", "traceable"]


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
    """transformers' ``CLIPAttention`` and ``SiglipAttention`` -> :class:`HFSelfAttention`
    (queries and keys detached when explaining; projections as the ``qkv_projection`` option
    says).

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
    if getattr(module, "is_causal", False):
        raise UnsupportedModule("causal self-attention is not converted in an image tower")
    return HFSelfAttention(
        *(qkv_projection_rule(getattr(module, n), context) for n in ("q_proj", "k_proj", "v_proj")),
        context.convert_child(module.out_proj, "out_proj"),
        module.num_heads,
        dropout=module.dropout,
        batch_first=True,
    )


def _rules() -> dict[type[nn.Module], Rule]:
    try:
        from transformers.activations import (
            GELUActivation,
            GELUTanh,
            NewGELUActivation,
            QuickGELUActivation,
        )
        from transformers.models.clip.modeling_clip import CLIPAttention
        from transformers.models.siglip.modeling_siglip import SiglipAttention
    except ImportError:
        return {}
    return {
        HFSelfAttention: keep,
        CLIPAttention: hf_attention,
        SiglipAttention: hf_attention,
        QuickGELUActivation: activation(lambda m: BcosQuickGELU()),
        GELUActivation: activation(lambda m: BcosGELU()),
        # the tanh approximation, in C (GELUTanh) or written out (NewGELUActivation)
        GELUTanh: activation(lambda m: BcosGELU("tanh")),
        NewGELUActivation: activation(lambda m: BcosGELU("tanh")),
    }


class HFImageTower(nn.Module):
    """The image tower of a transformers ``CLIPModel`` (or ``SiglipModel``): its ``vision_model``
    and ``visual_projection`` (an identity for SigLIP), under those names, without the text
    tower.

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


def _siglip_embeddings(
    self: nn.Module, pixel_values: Tensor, interpolate_pos_encoding: bool = False
):
    # no class token; the positional embedding as the table it is (looked up at 0..L-1)
    patches = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    return patches + self.position_embedding.weight


def _siglip_vision_model(self: nn.Module, pixel_values: Tensor, *args: Any, **kwargs: Any):
    hidden = self.post_layernorm(self.encoder(self.embeddings(pixel_values)))
    return self.head(hidden)  # pooler_output: the attention-pooling head


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


def traceable(model: nn.Module) -> list[str]:
    """Replace the ``forward`` of transformers' vision modules in ``model`` (a copy) by the
    same computation on tensors, which torch.fx can trace; returns a note.

    Their code branches on image sizes and returns output objects. Embeddings, encoder and
    vision model then return tensors (the vision model its ``pooler_output``); every module
    keeps its path and class.

    Raises:
        ConversionError: for a model that looks its positional embedding up at other positions
            than ``0..L-1``.
    """
    try:
        from transformers.models.clip import modeling_clip as clip
        from transformers.models.siglip import modeling_siglip as siglip
    except ImportError:
        return []
    if not any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        return []
    forwards = {
        clip.CLIPVisionEmbeddings: _hf_embeddings,
        clip.CLIPEncoder: _hf_encoder,
        clip.CLIPVisionModel: _hf_vision_model,
        clip.CLIPVisionModelWithProjection: _hf_projected,
        siglip.SiglipVisionEmbeddings: _siglip_embeddings,
        siglip.SiglipEncoder: _hf_encoder,
        siglip.SiglipVisionModel: _siglip_vision_model,
    }
    replaced = []
    for module in model.modules():
        forward = forwards.get(type(module))
        if forward is None:
            continue
        if forward is _siglip_vision_model and not module.use_head:
            raise ConversionError(
                "the SigLIP vision model has no attention-pooling head (vision_use_head=False), "
                "so it has no image embedding to convert"
            )
        if forward in (_hf_embeddings, _siglip_embeddings) and not module.position_ids.is_meta:
            positions = torch.arange(module.position_embedding.num_embeddings)
            if not torch.equal(module.position_ids.flatten().cpu(), positions):
                raise ConversionError(
                    "the CLIP vision model looks its positional embedding up at positions "
                    "other than 0..L-1 (position_ids was changed); bcosify supports the "
                    "standard layout"
                )
        replaced.append(type(module).__name__)
        replace_methods(module, {"forward": forward})
    if not replaced:
        return []
    return [
        f"the forward of {', '.join(dict.fromkeys(replaced))} (transformers) replaced by the "
        "same computation on tensors, which torch.fx can trace"
    ]


def _towers() -> dict[type[nn.Module], Tower]:
    try:
        from transformers import (
            CLIPModel,
            CLIPVisionModel,
            CLIPVisionModelWithProjection,
            SiglipModel,
            SiglipVisionModel,
        )
    except ImportError:
        return {}
    projected = "its image tower (vision_model, then visual_projection)"

    def clip_tower(model: Any) -> nn.Module:
        projection = getattr(model, "visual_projection", None) or nn.Identity()
        return HFImageTower(model.vision_model, projection)

    def itself(model: Any) -> nn.Module:
        return model

    return {
        HFImageTower: ("the image tower", itself),
        CLIPModel: (projected, clip_tower),
        HFImageFeatures: (projected, lambda features: clip_tower(features.model)),
        CLIPVisionModelWithProjection: (projected, itself),
        CLIPVisionModel: ("pooler_output of the vision model", itself),
        SiglipModel: ("its image tower (vision_model, its attention-pooling head)", clip_tower),
        SiglipVisionModel: ("pooler_output of the vision model (attention pooling)", itself),
    }


FAMILY = Family(
    name="transformers",
    rules=_rules,
    towers=_towers,
    prepare=traceable,
    supported=(
        Support("transformers", "CLIPModel (image tower)", "exact", "text tower kept"),
        Support("transformers", "CLIPVisionModel", "exact", "pooler_output"),
        Support(
            "transformers",
            "SiglipModel (image tower)",
            "exact",
            "attention-pooling head; text tower kept",
        ),
        Support("transformers", "SiglipVisionModel", "exact", "pooler_output (attention pooling)"),
    ),
)
