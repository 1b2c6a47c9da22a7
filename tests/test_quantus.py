"""bcosify.evaluate.quantus_explain as Quantus's explain_func, with three Quantus metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import random_bcos_cnn

from bcosify import explain
from bcosify.data import build_dataset
from bcosify.errors import EvaluationError
from bcosify.evaluate import mask_localisation, quantus_explain

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def batch():
    data = build_dataset("synthetic", "val", 32, num_examples=6, return_mask=True)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))]).remainder(5)
    masks = torch.stack([data[i][2] for i in range(len(data))])
    return images, labels, masks


def test_maps_are_the_channel_summed_contributions(batch):
    images, labels, _ = batch
    model = random_bcos_cnn(0)
    e = explain(model, images, target=labels)
    maps = e.input_contributions.sum(1, keepdim=True)
    signed = quantus_explain(model, images.numpy(), labels.numpy(), sign="signed")
    assert isinstance(signed, np.ndarray) and signed.dtype == np.float32
    np.testing.assert_allclose(signed, maps.numpy(), rtol=1e-5, atol=1e-7)
    positive = quantus_explain(model, images, labels, batch_size=4)  # torch in, torch out
    assert isinstance(positive, torch.Tensor)
    torch.testing.assert_close(positive, maps.clamp_min(0), rtol=1e-5, atol=1e-7)
    absolute = quantus_explain(model, images.numpy(), labels.numpy(), sign="absolute")
    np.testing.assert_allclose(absolute, np.abs(maps.numpy()), rtol=1e-5, atol=1e-7)
    channels = quantus_explain(model, images.numpy(), labels.numpy(), reduce_channels=False)
    assert channels.shape == images.shape and (channels >= 0).all()


def test_relevance_mass_accuracy_is_bcosify_mask_localisation(batch):
    images, labels, masks = batch
    model = random_bcos_cnn(1)
    metric = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    scores = metric(
        model=model,
        x_batch=images.numpy(),
        y_batch=labels.numpy(),
        s_batch=masks[:, None].numpy().astype(float),
        explain_func=quantus_explain,
        device="cpu",
    )
    e = explain(model, images, target=labels)
    expected = mask_localisation(e.input_contributions, masks)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-4, atol=1e-6)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_pointing_game_hits_where_the_largest_contribution_is_in_the_mask(batch):
    images, labels, masks = batch
    model = random_bcos_cnn(2)
    metric = quantus.PointingGame(disable_warnings=True)
    hits = metric(
        model=model,
        x_batch=images.numpy(),
        y_batch=labels.numpy(),
        s_batch=masks[:, None].numpy().astype(float),
        explain_func=quantus_explain,
        explain_func_kwargs={"sign": "signed"},
        device="cpu",
    )
    maps = explain(model, images, target=labels).input_contributions.sum(1).flatten(1)
    peak = maps.argmax(1)
    expected = masks.flatten(1).gather(1, peak[:, None]).squeeze(1)
    assert [bool(h) for h in hits] == expected.tolist()


def test_max_sensitivity_explains_perturbed_inputs(batch):
    images, labels, _ = batch
    model = random_bcos_cnn(3)
    calls = []

    def counted(**kwargs):
        calls.append(kwargs["inputs"].shape)
        return quantus_explain(**kwargs)

    metric = quantus.MaxSensitivity(
        nr_samples=3, lower_bound=0.05, disable_warnings=True, display_progressbar=False
    )
    scores = metric(
        model=model,
        x_batch=images.numpy(),
        y_batch=labels.numpy(),
        explain_func=counted,
        device="cpu",
    )
    assert len(scores) == len(images) and np.isfinite(scores).all() and min(scores) > 0
    assert len(calls) >= 1 + 3  # the explanations, then one per perturbation


def test_bad_options_are_named():
    model = random_bcos_cnn(0)
    x = np.random.rand(2, 3, 16, 16)
    with pytest.raises(EvaluationError, match="sign must be one of"):
        quantus_explain(model, x, np.array([0, 1]), sign="neg")
    with pytest.raises(EvaluationError, match="one class per example"):
        quantus_explain(model, x, np.array([0, 1, 2]))
    with pytest.raises(EvaluationError, match=r"nn\.Module"):
        quantus_explain(lambda x: x, x, np.array([0, 1]))
