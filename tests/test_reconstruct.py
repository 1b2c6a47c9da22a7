"""Layer-wise reconstruction (``calibrate(method="layers")``): B-cos layers solved in closed
form to reproduce the original's layers."""

from __future__ import annotations

import pytest
import torch
from test_convert import randomise_statistics

import bcosify
from bcosify.convert import calibrate
from bcosify.errors import UsageError
from bcosify.models import create
from bcosify.train import RecipeError, get_recipe
from bcosify.train.prepare import Normalized

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def setting(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A ResNet-18 with random weights and statistics, its normalised form, and images to fit
    on (64) and to measure on (16, others)."""
    torch.manual_seed(seed)
    original = randomise_statistics(create("torchvision:resnet18", num_classes=5), seed).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(80, 3, 32, 32, generator=generator)
    return original, Normalized(original, MEAN, STD), images[:64], images[64:]


def error(model: torch.nn.Module, target: torch.nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(images) - target(images)).pow(2).mean())


def test_an_exact_conversion_stays_exact():
    original, normalised, fit, held_out = setting()
    exact, _ = bcosify.convert(original, b=1.0, keep_bias=True)
    result = calibrate(exact, fit, method="layers", original=original, batch_size=32)
    assert (result.method, result.layers, result.images, result.skipped) == ("layers", 21, 64, ())
    with torch.no_grad():
        assert torch.allclose(exact(held_out), normalised(held_out), atol=1e-4)


@pytest.mark.parametrize(
    "b, keep_bias", [(1.5, True), pytest.param(2.0, False, marks=pytest.mark.slow)]
)
def test_reconstruction_brings_held_out_images_closer_to_the_original_than_fitted_norms(
    b, keep_bias
):
    original, normalised, fit, held_out = setting()
    errors = {}
    for method in (None, "original", "layers"):
        model, _ = bcosify.convert(original, b=b, keep_bias=keep_bias)
        if method:
            calibrate(model, fit, method=method, original=original)
        errors[method] = error(model, normalised, held_out)
    # measured on the held-out images: (1.5, biases) 0.78 unfitted, 0.48 norms fitted, 0.005
    # layers; (2, no biases) 3.87, 3.87, 1.94
    assert errors["layers"] < 0.6 * min(errors["original"], errors[None]), errors
    e = bcosify.explain(model, held_out[:4])  # weights only changed: still exact
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual


def test_every_layer_left_as_converted_is_named_with_why():
    original, _, fit, _ = setting()
    model, _ = bcosify.convert(original, b=1.5, keep_bias=True)
    model.network.layer1[0].conv1.normalize_weights = True
    before = model.network.layer1[0].conv1.weight.clone()
    result = calibrate(model, fit, method="layers", original=original)
    assert result.layers == 20
    assert result.skipped == (
        "layer1.0.conv1: normalised weights (normalize_weights=True) fix the scale a fit would set",
    )
    assert torch.equal(model.network.layer1[0].conv1.weight, before)
    assert "left as converted: layer1.0.conv1" in str(result)


def test_reconstruction_errors_say_what_to_pass():
    original, _, fit, _ = setting()
    model, _ = bcosify.convert(original, b=1.5, keep_bias=True)
    with pytest.raises(UsageError, match="method='layers' fits the model to the original: pass"):
        calibrate(model, fit, method="layers")
    with pytest.raises(UsageError, match="ridge must be positive"):
        calibrate(model, fit, method="layers", original=original, ridge=0.0)
    other = create("torchvision:vgg11", num_classes=5)
    with pytest.raises(UsageError, match="counterparts at the same paths"):
        calibrate(model, fit, method="layers", original=other)


@pytest.mark.parametrize("start", ["layers", "blocks"])
def test_alignment_can_start_from_reconstructed_layers(tmp_path, start):
    from test_label_free import photos

    from bcosify.train import align

    original, normalised, _, _ = setting()
    data = bcosify.data.UnlabelledImages(photos(tmp_path / "photos", 8), 32)
    recipe = get_recipe(
        "bcosify-align", b=1.0, keep_bias=True, align_start=start, align_calibration=8,
        epochs=1, batch_size=4, epoch_size=8, image_size=32, optimizer="sgd",
        align_block_steps=5,
    )  # fmt: skip
    result = align(original, data, tmp_path / "run", recipe=recipe, val_data=data, progress=False)
    assert result.train.history[-1]["val_agreement"] == 1.0
    images = torch.stack([data[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(images), normalised(images), atol=1e-4)
    with pytest.raises(RecipeError, match="align_start must be one of"):
        get_recipe("bcosify-align", align_start="weights")


def test_the_solve_in_the_space_of_the_samples_is_the_usual_ridge_solution():
    from bcosify.convert.reconstruct import _accumulate, _Problem, _solve
    from bcosify.nn import BcosConv2d

    torch.manual_seed(0)
    layer = BcosConv2d(8, 6, 3, padding=1, groups=2, b=1.5).double()
    x, target = torch.randn(2, 8, 3, 3).double(), torch.randn(2, 6, 3, 3).double()
    start, solutions = layer.weight.detach().clone(), []
    for dual in (True, False):  # 18 samples, 36 inputs per unit: the dual solve applies
        problem = _Problem(layer, layer, None, start)
        assert _accumulate(problem, x, target)
        if not dual:
            problem.samples = None
        _solve(problem, 1e-2)
        solutions.append(layer.weight.detach().clone())
    assert torch.allclose(*solutions, atol=1e-10), (solutions[0] - solutions[1]).abs().max()
