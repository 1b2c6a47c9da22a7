"""Colour explanations and contribution-map pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import random_bcos_cnn
from PIL import Image

from bcosify import ExplanationError, explain
from bcosify.explain import (
    colour_explanation,
    contribution_map_image,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
)


def encoded(n: int, size: int = 10) -> torch.Tensor:
    x = torch.rand(n, 3, size, size)
    return torch.cat([x, 1 - x], 1)


def test_colour_image_is_rgba_in_unit_range_and_transparent_where_negative():
    inputs, weights = encoded(3), torch.randn(3, 6, 10, 10)
    rgba = colour_explanation(inputs, weights)
    assert rgba.shape == (3, 10, 10, 4)
    assert rgba.min() >= 0 and rgba.max() <= 1
    negative = (inputs * weights).sum(1) < 0
    assert negative.any() and (rgba[..., 3][negative] == 0).all()
    assert (rgba[..., 3][~negative] > 0).all()
    assert torch.allclose(colour_explanation(inputs[1], weights[1]), rgba[1])


def test_colour_follows_the_weights_on_x_against_one_minus_x():
    inputs = encoded(1)
    weights = torch.zeros(1, 6, 10, 10)
    weights[:, 0] = 1.0  # only red: evidence for "more red"
    weights[:, 5] = 1.0  # and for "less blue"
    rgba = colour_explanation(inputs, weights)
    torch.testing.assert_close(rgba[0, 0, 0, :3], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_alpha_saturates_at_the_percentile_and_smoothing_keeps_the_size():
    inputs, weights = encoded(1), torch.rand(1, 6, 10, 10)  # all contributions positive
    norms = weights.norm(dim=1).flatten()
    rgba = colour_explanation(inputs, weights, percentile=50)
    expected = (weights.norm(dim=1) / norms.quantile(0.5)).clamp(0, 1)
    torch.testing.assert_close(rgba[0, ..., 3], expected[0])
    assert colour_explanation(inputs, weights, smooth=4).shape == (1, 10, 10, 4)
    assert colour_explanation(inputs, weights, smooth=5).shape == (1, 10, 10, 4)


def test_colour_image_needs_encoded_inputs():
    with pytest.raises(ExplanationError, match=r"\(N, 6, H, W\)"):
        colour_explanation(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))


def test_contribution_map_is_signed():
    cmap = torch.zeros(1, 4, 4)
    cmap[0, 0, 0], cmap[0, 3, 3] = 1.0, -1.0
    rgba = contribution_map_image(cmap, percentile=100)
    red, blue, white = rgba[0, 0, 0], rgba[0, 3, 3], rgba[0, 1, 1]
    assert red[0] > 0.9 and red[2] < 0.1
    assert blue[2] > 0.9 and blue[0] < 0.1
    assert (white[:3] > 0.9).all()


def test_save_helpers_write_pngs(tmp_path):
    model = random_bcos_cnn(0)
    e = explain(model, torch.rand(2, 3, 16, 16))
    colour = save_colour_explanation(tmp_path / "c.png", e.inputs[0], e.weights[0], upscale=4)
    cmap = save_contribution_map(tmp_path / "sub" / "m.png", e.contribution_map[1])
    rgba = colour_explanation(e.inputs[0], e.weights[0])
    with Image.open(colour) as image:  # composited on black: every viewer shows the same
        assert image.mode == "RGB" and image.size == (64, 64)
        pixels = torch.from_numpy(np.asarray(image)[::4, ::4].copy()).float() / 255
    assert torch.allclose(pixels, rgba[..., :3] * rgba[..., 3:], atol=1 / 255)
    for background, mode in (("white", "RGB"), (None, "RGBA")):
        path = tmp_path / f"{background}.png"
        save_colour_explanation(path, e.inputs[0], e.weights[0], background=background)
        with Image.open(path) as image:
            assert image.mode == mode
            if background == "white":  # transparent where there is no evidence: white
                shown = torch.from_numpy(np.asarray(image).copy()).float() / 255
                blank = rgba[..., 3] == 0
                assert blank.any() and torch.allclose(shown[blank], torch.ones(3))
    with Image.open(cmap) as image:
        assert image.size == (16, 16)
        assert np.asarray(image).shape == (16, 16, 4)
    fig = explanation_figure(e, 1, smooth=3)
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
