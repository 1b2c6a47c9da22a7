"""Input x Gradient (Shrikumar et al., 2016): the input times the gradient, by Captum."""

from __future__ import annotations

from torch import Tensor, nn

from .base import Embedded, ImageExplainer, TextExplainerBase, captum
from .registry import register

__all__ = ["InputXGradientExplainer", "InputXGradientTextExplainer"]


@register("input_x_gradient", "image")
class InputXGradientExplainer(ImageExplainer):
    """Input times gradient. No options."""

    name = "input_x_gradient"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        return captum().InputXGradient(self.model).attribute(inputs, target=target)


@register("input_x_gradient", "text")
class InputXGradientTextExplainer(TextExplainerBase):
    """The embedded tokens times their gradient, summed per token. No options."""

    name = "input_x_gradient"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._forward = Embedded(model)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        values = (
            captum()
            .InputXGradient(self._forward)
            .attribute(self._forward.embed(ids), target=target, additional_forward_args=(ids, mask))
        )
        return values.sum(-1)
