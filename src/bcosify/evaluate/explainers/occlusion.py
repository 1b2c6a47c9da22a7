"""Occlusion (Zeiler and Fergus, 2014), by Captum: the drop of the target's score when a part
of the input is replaced by a baseline (squares of an image, single tokens of a text)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import EvaluationError
from .._common import check_positive
from .base import Embedded, ImageExplainer, TextExplainerBase, captum, distinct_images, pair
from .registry import register

__all__ = ["OcclusionExplainer", "OcclusionTextExplainer"]


@register("occlusion", "image")
class OcclusionExplainer(ImageExplainer):
    """Squares of ``window`` pixels (1/8 of the image side) moved by ``stride`` (half the
    window) set to ``baseline``: the drop of the target's score where each covers."""

    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        baseline: float = 0.0,
        perturbations_per_eval: int = 16,
    ) -> None:
        super().__init__(model)
        check_positive(perturbations_per_eval=perturbations_per_eval)
        self._window = None if window is None else pair("window", window)
        self._stride = None if stride is None else pair("stride", stride)
        self.options = {
            "window": self._window,
            "stride": self._stride,
            "baseline": baseline,
            "perturbations_per_eval": perturbations_per_eval,
        }

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        channels, height, width = inputs.shape[1:]
        window = self._window or (max(1, round(height / 8)), max(1, round(width / 8)))
        stride = self._stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        if window[0] > height or window[1] > width:
            raise EvaluationError(
                f"occlusion window {window} is larger than the images ({height}, {width}); "
                "pass a smaller window="
            )
        # Every occluded forward pass gives the scores of all classes: each distinct image is
        # occluded once and its attributions for all the classes asked of it come out together
        # (Captum attributes every element of a multi-output forward function; the pointing
        # game explains each grid for four classes).
        unique, row = distinct_images(inputs)
        classes = [sorted(set(target[row == u].tolist())) for u in range(len(unique))]
        width = max(map(len, classes))
        table = torch.tensor([c + c[:1] * (width - len(c)) for c in classes], device=inputs.device)

        def scores(batch: Tensor) -> Tensor:
            # Captum stacks the perturbed copies of all distinct images along the batch
            return self.model(batch).gather(1, table.repeat(len(batch) // len(unique), 1))

        attributions = (
            captum()
            .Occlusion(scores)
            .attribute(
                unique,
                sliding_window_shapes=(channels, *window),
                strides=(channels, *stride),
                baselines=self.options["baseline"],
                target=None,
                perturbations_per_eval=self.options["perturbations_per_eval"],
            )
        )
        attributions = attributions.view(len(unique), width, *inputs.shape[1:])
        column = [classes[u].index(t) for u, t in zip(row.tolist(), target.tolist(), strict=True)]
        return attributions[row, torch.tensor(column, device=row.device)]


@register("occlusion", "text")
class OcclusionTextExplainer(TextExplainerBase):
    """Each token's embedding set to zero in turn: the drop of the target's score."""

    name = "occlusion"

    def __init__(self, model: nn.Module, *, perturbations_per_eval: int = 8) -> None:
        check_positive(perturbations_per_eval=perturbations_per_eval)
        super().__init__(model, perturbations_per_eval=perturbations_per_eval)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        forward = Embedded(self.model)
        embeddings = forward.embed(ids)

        def scores(batch: Tensor) -> Tensor:  # Captum stacks copies of the whole batch
            copies = len(batch) // len(ids)
            return forward(batch, ids.repeat(copies, 1), mask.repeat(copies, 1))

        values = (
            captum()
            .Occlusion(scores)
            .attribute(
                embeddings,
                sliding_window_shapes=(1, embeddings.shape[-1]),
                strides=(1, embeddings.shape[-1]),
                baselines=0.0,
                target=target,
                perturbations_per_eval=self.options["perturbations_per_eval"],
            )
        )
        return values[..., 0]  # the same drop on every embedding dimension of the token
