"""Colour fidelity: an aligned explanation scores 0, an inverted one worse than chance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bcosify import explain
from bcosify.errors import EvaluationError
from bcosify.evaluate import colour_fidelity, colour_fidelity_of_model
from bcosify.nn import InputEncoding


class Mirror(nn.Module):
    """A dynamic-linear model whose weights are the encoded input itself (perfect alignment) on
    the pixels of ``region``, and the input with its halves swapped (the inverse colour)
    elsewhere."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.encoding = InputEncoding()
        self.register_buffer("region", region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoding(x)
        swapped = torch.cat([z[:, 3:], z[:, :3]], 1)
        weights = torch.where(self.region, z, swapped).detach()
        score = (z * weights).sum((1, 2, 3))
        return torch.stack([score, -score], 1)


def _images(n: int = 8, side: int = 12) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0))


def test_aligned_weights_score_zero_and_the_shuffled_control_does_not() -> None:
    images = _images()
    model = Mirror(torch.ones(12, 12, dtype=torch.bool))
    fidelity = colour_fidelity(explain(model, images, 0), images)
    assert fidelity.error.abs().max() < 1e-5
    # uniform random colours: |u - v| averages 1/3 per channel
    assert 0.25 < float(fidelity.shuffled.mean()) < 0.42
    assert fidelity.error.shape == fidelity.shuffled.shape == (8,)


class Opponent(nn.Module):
    """A dynamic-linear model whose weights are ``[x - 1/2, 1/2 - x]``: every channel on the
    pixel's side, no input-independent part (the directions ``[d, -d]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoding = InputEncoding()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoding(x)
        score = (z * (z - 0.5).detach()).sum((1, 2, 3))
        return torch.stack([score, -score], 1)


def test_weights_without_an_input_independent_part_score_the_rounded_reference() -> None:
    images = _images()
    explanation = explain(Opponent(), images, 0)
    fidelity = colour_fidelity(explanation, images)
    torch.testing.assert_close(fidelity.error, fidelity.rounded)
    # every pixel: uniform colours rounded to 0 or 1 are 1/4 off on average; the strongest
    # evidence of this model lies on the most saturated colours, which rounding changes least
    everywhere = colour_fidelity(explanation, images, fraction=1.0)
    torch.testing.assert_close(everywhere.error, everywhere.rounded)
    assert 0.22 < float(everywhere.rounded.mean()) < 0.28
    assert float(fidelity.rounded.mean()) < float(everywhere.rounded.mean()) - 0.05


def test_inverted_colours_score_worse_than_the_shuffled_control() -> None:
    images = _images()
    model = Mirror(torch.zeros(12, 12, dtype=torch.bool))
    fidelity = colour_fidelity(explain(model, images, 0), images)
    assert float(fidelity.error.mean()) > float(fidelity.shuffled.mean()) + 0.05


def test_masks_restrict_the_pixels_compared() -> None:
    images = _images()
    region = torch.zeros(12, 12, dtype=torch.bool)
    region[3:9, 3:9] = True
    explanation = explain(Mirror(region), images, 0)
    masks = region.expand(8, 12, 12)
    assert colour_fidelity(explanation, images, masks).error.abs().max() < 1e-5
    # aligned pixels carry more evidence (|z|^2 against 2 z_k (1 - z_k)): the strongest fifth
    # lies inside the region, and all of the positive pixels reach outside it
    assert colour_fidelity(explanation, images).error.abs().max() < 1e-5
    assert float(colour_fidelity(explanation, images, fraction=1.0).error.mean()) > 0.05


def test_the_strongest_fraction_of_the_positive_pixels_is_kept() -> None:
    images = _images(n=2)
    explanation = explain(Mirror(torch.ones(12, 12, dtype=torch.bool)), images, 0)
    positive = (explanation.contribution_map > 0).flatten(1).sum(1)
    fidelity = colour_fidelity(explanation, images, fraction=0.1)
    assert fidelity.pixels.tolist() == (positive.float() * 0.1).ceil().long().tolist()


def test_bad_input_is_refused_with_a_reason() -> None:
    images = _images(n=2)
    explanation = explain(Mirror(torch.ones(12, 12, dtype=torch.bool)), images, 0)
    with pytest.raises(EvaluationError, match="explained images"):
        colour_fidelity(explanation, images[:, :, :6])
    with pytest.raises(EvaluationError, match="masks must be"):
        colour_fidelity(explanation, images, torch.ones(3, 12, 12))
    with pytest.raises(EvaluationError, match="no pixel with positive contribution"):
        colour_fidelity(explanation, images, torch.zeros(2, 12, 12))
    with pytest.raises(EvaluationError, match="fraction"):
        colour_fidelity(explanation, images, fraction=0.0)
    flat = explain(nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 2)), images, 0, check="off")
    with pytest.raises(EvaluationError, match=r"\[x, 1 - x\]"):
        colour_fidelity(flat, images)


def test_a_model_is_measured_on_its_correct_predictions_the_same_in_any_batches() -> None:
    images = _images(n=10)
    model = Mirror(torch.zeros(12, 12, dtype=torch.bool))  # predicts class 0 for every image
    labels = torch.tensor([0, 1] * 5)
    whole = colour_fidelity_of_model(model, images, labels, batch_size=10)
    batched = colour_fidelity_of_model(model, images, labels, batch_size=3)
    alone = colour_fidelity(explain(model, images[0::2], 0), images[0::2])
    assert len(whole.error) == 5  # the five images labelled 0
    assert torch.allclose(whole.error, alone.error) and torch.allclose(batched.error, alone.error)
    assert torch.equal(batched.pixels, alone.pixels)
    with pytest.raises(EvaluationError, match="none of the 10 images is classified correctly"):
        colour_fidelity_of_model(model, images, torch.ones(10, dtype=torch.long))
