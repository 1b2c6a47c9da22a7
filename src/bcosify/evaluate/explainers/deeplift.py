"""DeepLIFT (Shrikumar et al., 2017) with the Rescale rule, by Captum: attributions relative
to a baseline (``baseline`` for images, zero embeddings for texts).

Captum replaces the gradient of each non-linear module (``nn.ReLU``, ``nn.MaxPool2d``, ...),
keeping one input and output per module: every non-linearity must be its own module, called
once per forward pass. On a B-cos model the B-cos units are treated through their gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ...errors import EvaluationError
from .base import Embedded, ImageExplainer, TextExplainerBase, captum
from .registry import register

__all__ = ["DeepLiftExplainer", "DeepLiftTextExplainer"]


@register("deeplift", "image")
class DeepLiftExplainer(ImageExplainer):
    """DeepLIFT on the images from a constant ``baseline`` image; refuses models that reuse a
    non-linear module."""

    name = "deeplift"

    def __init__(self, model: nn.Module, *, baseline: float = 0.0) -> None:
        super().__init__(model, baseline=baseline)
        self._checked = False

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        if not self._checked:
            _check_single_use(self.model, inputs[:1])
            self._checked = True
        try:
            return (
                captum()
                .DeepLift(self.model)
                .attribute(inputs, target=target, baselines=self.options["baseline"])
            )
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError) as error:
            raise EvaluationError(
                f"Captum's DeepLift failed on {type(self.model).__name__}: {error}\nDeepLift "
                "replaces the gradient of each non-linear module (nn.ReLU, nn.MaxPool2d, ...) "
                "and needs every one of them to be its own module, called once per forward "
                "pass; functional calls (F.relu, torch.relu) are not seen. Rewrite the model "
                "that way, or use another explainer."
            ) from error


@register("deeplift", "text")
class DeepLiftTextExplainer(TextExplainerBase):
    """DeepLIFT on the embedded tokens from zero embeddings, summed per token. No options."""

    name = "deeplift"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._forward = Embedded(model)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        embeddings = self._forward.embed(ids)
        values = (
            captum()
            .DeepLift(self._forward)
            .attribute(
                embeddings,
                baselines=torch.zeros_like(embeddings),
                target=target,
                additional_forward_args=(ids, mask),
            )
        )
        return values.sum(-1)


def _check_single_use(model: nn.Module, example: Tensor) -> None:
    """Refuse models that call a DeepLift non-linearity more than once per forward pass.

    Captum keeps one input and output per module, so a reused module (torchvision's ResNet
    blocks reuse ``self.relu``) makes it fail or compute with the wrong activations.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    counts: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    handles = [
        module.register_forward_pre_hook(count(name))
        for name, module in model.named_modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    reused = {name: n for name, n in counts.items() if n > 1}
    if reused:
        listed = ", ".join(f"'{name}' ({n} times)" for name, n in sorted(reused.items()))
        raise EvaluationError(
            f"DeepLift cannot explain this {type(model).__name__}: the non-linear module(s) "
            f"{listed} are called more than once per forward pass, and Captum's DeepLift keeps "
            "one set of activations per module. Give every use its own module (e.g. a fresh "
            "nn.ReLU per call), or use another explainer."
        )
