"""Saliency (Simonyan et al., 2014): the gradient of the target's score, by Captum."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Embedded, ImageExplainer, TextExplainerBase, captum
from .registry import register

__all__ = ["SaliencyExplainer", "SaliencyTextExplainer"]


@register("saliency", "image")
class SaliencyExplainer(ImageExplainer):
    """The input gradient; ``absolute`` takes its absolute value (Captum's default)."""

    name = "saliency"

    def __init__(self, model: nn.Module, *, absolute: bool = True) -> None:
        super().__init__(model, absolute=absolute)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        method = captum().Saliency(self.model)
        return method.attribute(inputs, target=target, abs=self.options["absolute"])


@register("saliency", "text")
class SaliencyTextExplainer(TextExplainerBase):
    """The gradient with respect to the embedded tokens, summed per token (of its absolute
    value with ``absolute``)."""

    name = "saliency"

    def __init__(self, model: nn.Module, *, absolute: bool = True) -> None:
        super().__init__(model, absolute=absolute)
        self._forward = Embedded(model)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        values = (
            captum()
            .Saliency(self._forward)
            .attribute(
                self._forward.embed(ids),
                abs=self.options["absolute"],
                target=target,
                additional_forward_args=(ids, mask),
            )
        )
        return values.sum(-1)
