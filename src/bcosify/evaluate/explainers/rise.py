"""RISE (Petsiuk et al., 2018): the class probability of randomly masked images, as weights of
the masks; one map per image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import EvaluationError
from .._common import check_positive, probabilities, resolve_probability
from .base import ImageExplainer, distinct_images
from .registry import register

__all__ = ["RiseExplainer"]


@register("rise", "image")
class RiseExplainer(ImageExplainer):
    """RISE (Petsiuk et al., 2018): the class probability of randomly masked images, as weights.

    Each mask is a ``cells x cells`` grid of independent coin flips (keep with probability
    ``keep``), upsampled bilinearly to ``cells + 1`` cells of ``ceil(size / cells)`` pixels and
    cropped at a random shift, so its edges are soft and fall anywhere. The saliency of a pixel
    is ``sum_i p_c(x * M_i) M_i / (n_masks * keep)``; ``centred=True`` subtracts the mean
    probability over the masks from every ``p_c(x * M_i)`` first, so that the map is positive
    where keeping the pixel raises the probability above average and negative where it lowers
    it, instead of positive everywhere around the constant ``mean(p_c)``: metrics that count
    positive attribution (the pointing game, localisation in a mask) see the evidence, not the
    constant. The order of the pixels, which deletion uses, barely changes.
    """

    name = "rise"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_masks: int = 2000,
        cells: int = 7,
        keep: float = 0.5,
        seed: int = 0,
        batch_size: int = 256,
        probability: str = "auto",
        centred: bool = False,
    ) -> None:
        super().__init__(model)
        check_positive(n_masks=n_masks, cells=cells, batch_size=batch_size)
        if not 0.0 < keep < 1.0:
            raise EvaluationError(f"RISE keep must be in (0, 1), got {keep}")
        self.options = {
            "n_masks": n_masks,
            "cells": cells,
            "keep": keep,
            "seed": seed,
            "batch_size": batch_size,
            "probability": resolve_probability(model, probability),
            "centred": bool(centred),
        }

    @torch.no_grad()
    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        o = self.options
        count, (height, width) = inputs.shape[0], inputs.shape[-2:]
        # drawn up front, so that the masks depend on the seed only, not on the batching
        generator = torch.Generator().manual_seed(o["seed"])
        grids = torch.rand(o["n_masks"], 1, o["cells"], o["cells"], generator=generator)
        grids = (grids < o["keep"]).float()
        cell_h, cell_w = math.ceil(height / o["cells"]), math.ceil(width / o["cells"])
        shift_y = torch.randint(cell_h, (o["n_masks"],), generator=generator).tolist()
        shift_x = torch.randint(cell_w, (o["n_masks"],), generator=generator).tolist()
        # one masked forward pass gives every class's score: an image that appears several
        # times (explained for several classes, as in the pointing game) is masked only once
        unique, row = distinct_images(inputs)
        saliency = inputs.new_zeros(count, height, width)
        coverage = inputs.new_zeros(height, width)  # sum_i M_i
        total = inputs.new_zeros(count)  # sum_i p_c(x * M_i)
        step = max(1, o["batch_size"] // len(unique))
        for start in range(0, o["n_masks"], step):
            stop = min(start + step, o["n_masks"])
            upsampled = F.interpolate(
                grids[start:stop].to(inputs.device),
                size=((o["cells"] + 1) * cell_h, (o["cells"] + 1) * cell_w),
                mode="bilinear",
                align_corners=False,
            )
            shifts = zip(shift_y[start:stop], shift_x[start:stop], strict=True)
            masks = torch.stack(
                [upsampled[i, 0, y : y + height, x : x + width] for i, (y, x) in enumerate(shifts)]
            )
            masked = (unique[:, None] * masks[None, :, None]).flatten(0, 1)
            scores = probabilities(self.model(masked), o["probability"])
            scores = scores.view(len(unique), stop - start, -1)[row]
            weights = scores.gather(2, target.view(count, 1, 1).expand(-1, stop - start, 1))
            saliency += torch.einsum("nm,mhw->nhw", weights.squeeze(2), masks)
            coverage += masks.sum(0)
            total += weights.squeeze(2).sum(1)
        if o["centred"]:  # sum_i (p_i - mean p) M_i
            saliency -= (total / o["n_masks"])[:, None, None] * coverage
        saliency /= o["n_masks"] * o["keep"]
        return saliency[:, None] / inputs.shape[1]
