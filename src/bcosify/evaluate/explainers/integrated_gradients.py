"""Integrated Gradients (Sundararajan et al., 2017), by Captum: the gradient averaged along the
straight path from a baseline (``baseline`` for images, zero embeddings for texts) to the
input, in ``n_steps`` steps of ``internal_batch_size`` inputs per forward pass, times the
difference from the baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._common import check_positive
from .base import Embedded, ImageExplainer, TextExplainerBase, captum
from .registry import register

__all__ = ["IntegratedGradientsExplainer", "IntegratedGradientsTextExplainer"]


def _check(n_steps: int, internal_batch_size: int | None) -> None:
    check_positive(n_steps=n_steps)
    if internal_batch_size is not None:
        check_positive(internal_batch_size=internal_batch_size)


@register("integrated_gradients", "image")
class IntegratedGradientsExplainer(ImageExplainer):
    """Integrated Gradients on the images, from a constant ``baseline`` image."""

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int = 50,
        internal_batch_size: int | None = 64,
        baseline: float = 0.0,
    ) -> None:
        _check(n_steps, internal_batch_size)
        super().__init__(
            model, n_steps=n_steps, internal_batch_size=internal_batch_size, baseline=baseline
        )

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        o = self.options
        return (
            captum()
            .IntegratedGradients(self.model)
            .attribute(
                inputs,
                target=target,
                baselines=o["baseline"],
                n_steps=o["n_steps"],
                internal_batch_size=o["internal_batch_size"],
            )
        )


@register("integrated_gradients", "text")
class IntegratedGradientsTextExplainer(TextExplainerBase):
    """Integrated Gradients on the embedded tokens, from zero embeddings, summed per token."""

    name = "integrated_gradients"

    def __init__(
        self, model: nn.Module, *, n_steps: int = 50, internal_batch_size: int | None = 64
    ) -> None:
        _check(n_steps, internal_batch_size)
        super().__init__(model, n_steps=n_steps, internal_batch_size=internal_batch_size)
        self._forward = Embedded(model)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        embeddings = self._forward.embed(ids)
        values = (
            captum()
            .IntegratedGradients(self._forward)
            .attribute(
                embeddings,
                baselines=torch.zeros_like(embeddings),
                target=target,
                additional_forward_args=(ids, mask),
                n_steps=self.options["n_steps"],
                internal_batch_size=self.options["internal_batch_size"],
            )
        )
        return values.sum(-1)
