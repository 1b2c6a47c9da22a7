"""The B-cos model's own explanation: the contributions ``x * W(x)`` (images, folded to RGB) or
per token (texts), exact by construction. B-cos models only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import EvaluationError
from ...explain.text import explain_tokens
from .._common import has_bcos_layers
from .base import ImageExplainer, TextExplainerBase, check_tokens
from .registry import Modality, names, register

__all__ = ["BcosExplainer", "BcosTextExplainer"]


def _require_bcos(model: nn.Module, modality: Modality) -> None:
    if not has_bcos_layers(model):
        raise EvaluationError(
            f"the 'bcos' explainer is the model's own dynamic-linear explanation and needs a "
            f"B-cos model (with BcosConv2d / BcosLinear layers), but this "
            f"{type(model).__name__} has none. Convert it with bcosify.convert and fine-tune "
            f"it, or explain it with a post-hoc method: {', '.join(names(modality)[1:])}"
        )


@register("bcos", "image")
class BcosExplainer(ImageExplainer):
    """The contributions of a B-cos image model (:class:`~bcosify.BcosAttribution`)."""

    name = "bcos"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        _require_bcos(model, "image")
        from ...explain.attribution import BcosAttribution  # imports Captum: only when used

        self._method = BcosAttribution(model)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        # explain() switches explanation mode on inside the post-hoc "off", and back
        return self._method.attribute(inputs, target=target)


@register("bcos", "text")
class BcosTextExplainer(TextExplainerBase):
    """The per-token contributions of a B-cos text model (:func:`bcosify.explain_tokens`)."""

    name = "bcos"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        _require_bcos(model, "text")

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor:
        ids, mask, targets = check_tokens(input_ids, attention_mask, target, self.name)
        e = explain_tokens(self.model, ids, mask, targets)
        return e.contributions.to(device=input_ids.device, dtype=torch.float32)
