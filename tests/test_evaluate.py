"""Evaluation: explainers behind one interface, the grid pointing game, localisation, deletion."""

from __future__ import annotations

import copy

import pytest
import torch
from nets import assert_differs, assert_signal, keep_signal_alive
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import bcosify
from bcosify import BcosModel
from bcosify.errors import BcosifyError, EvaluationError
from bcosify.evaluate import (
    EXPLAINER_NAMES,
    Explainer,
    Interval,
    PointingGameResult,
    accuracy,
    bootstrap_interval,
    build_explainer,
    correct,
    deletion_auc,
    deletion_curves,
    gradcam_layer,
    grid_pointing_game,
    make_grids,
    mask_localisation,
    pointing_game_scores,
)
from bcosify.explain import explain
from bcosify.nn import is_explaining
from bcosify.train import Normalized

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
FAST = {
    "rise": {"n_masks": 40, "batch_size": 64},
    "occlusion": {"window": 4, "stride": 4},
    "lime": {"n_samples": 40, "patches": 4},
}


def tiny_cnn(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    ).eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    net = tiny_cnn()
    converted = bcosify.convert(net, input_mean=MEAN, input_std=STD).model
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return {
        "original": Normalized(net, MEAN, STD).eval(),
        "bcos": keep_signal_alive(converted, images),  # converted, its logits are the bias
    }


# --- the grid pointing game ------------------------------------------------------------------


def one_hot_cells(n: int, size: int = 4) -> Tensor:
    """Explanation g, k puts all its (positive) mass on one pixel of cell k."""
    maps = torch.zeros(2, n * n, n * size, n * size)
    for k in range(n * n):
        maps[:, k, (k // n) * size + 1, (k % n) * size + 2] = 3.0
    return maps


@pytest.mark.parametrize("n", [2, 3])
def test_a_perfect_explainer_scores_one_and_a_uniform_one_one_over_n_squared(n):
    torch.testing.assert_close(pointing_game_scores(one_hot_cells(n), n), torch.ones(2, n * n))
    uniform = torch.full((2, n * n, 3, 6 * n, 6 * n), 0.7)
    expected = torch.full((2, n * n), 1 / n**2)
    torch.testing.assert_close(pointing_game_scores(uniform, n), expected)
    # with smoothing a uniform map stays uniform: windows over the border are not diluted
    for k in (2, 3, 5):
        torch.testing.assert_close(pointing_game_scores(uniform, n, smooth=k), expected)


def test_negative_attributions_are_ignored_and_channels_are_summed():
    maps = one_hot_cells(2)
    maps -= 5.0 * (maps == 0)  # strong negative evidence everywhere else
    torch.testing.assert_close(pointing_game_scores(maps, 2), torch.ones(2, 4))
    # three channels that only sum to a positive value in the right cell
    channels = torch.stack([maps, -maps / 2, torch.zeros_like(maps)], dim=2)
    torch.testing.assert_close(pointing_game_scores(channels, 2), torch.ones(2, 4))
    assert pointing_game_scores(-torch.ones(1, 4, 8, 8), 2).eq(0).all()  # no positive mass


def test_pointing_game_scores_share_of_mass_and_bad_shapes():
    maps = torch.zeros(1, 4, 4, 4)
    maps[0, 0, 0, 0], maps[0, 0, 3, 3] = 3.0, 1.0  # 3/4 in cell 0, 1/4 in cell 3
    assert pointing_game_scores(maps, 2)[0, 0].item() == pytest.approx(0.75)
    with pytest.raises(EvaluationError, match="divisible by 2"):
        pointing_game_scores(torch.zeros(1, 4, 5, 4), 2)
    with pytest.raises(EvaluationError, match="a 3x3 grid"):
        pointing_game_scores(torch.zeros(1, 4, 6, 6), 3)
    with pytest.raises(EvaluationError, match="smooth"):
        pointing_game_scores(maps, 2, smooth=-1)


def test_pooling_sums_evidence_over_squares_that_tile_the_cells():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 2, 12, 12, generator=gen)
    # a map that is constant on the squares already is unchanged by pooling over them
    blocky = maps.sum(2).view(3, 4, 4, 3, 4, 3).mean((3, 5), keepdim=True)
    blocky = blocky.expand(3, 4, 4, 3, 4, 3).reshape(3, 4, 12, 12)
    torch.testing.assert_close(
        pointing_game_scores(blocky, 2, pool=3), pointing_game_scores(blocky, 2)
    )
    # pooling is the same as scoring the squares' sums, one value per square
    sums = maps.sum(2).view(3, 4, 4, 3, 4, 3).sum((3, 5))
    torch.testing.assert_close(pointing_game_scores(maps, 2, pool=3), pointing_game_scores(sums, 2))
    # the whole cell as one square: all-or-nothing per cell, the cell's net evidence
    whole = pointing_game_scores(maps, 2, pool=6)
    net = maps.sum(2).view(3, 4, 2, 6, 2, 6).sum((3, 5)).clamp_min(0).flatten(2)
    expected = net.diagonal(dim1=1, dim2=2) / net.sum(2).clamp_min(1e-30)
    torch.testing.assert_close(whole, expected)
    with pytest.raises(EvaluationError, match="tile each cell of 6 x 6"):
        pointing_game_scores(maps, 2, pool=4)
    with pytest.raises(EvaluationError, match="pool"):
        pointing_game_scores(maps, 2, pool=-2)


def labelled_images(num_classes: int, per_class: int, size: int = 4) -> tuple[Tensor, Tensor]:
    """Image i is filled with a value that identifies it: its label + rank / 10."""
    labels = torch.arange(num_classes).repeat(per_class)
    rank = torch.arange(num_classes * per_class) // num_classes
    values = labels + rank / 10
    return values.view(-1, 1, 1, 1).expand(-1, 3, size, size).clone(), labels


def test_make_grids_layout_and_cell_indexing():
    images, labels = labelled_images(6, 1)
    grids, cell_labels = make_grids(images, labels, torch.ones(6), 2, 5, seed=3)
    assert grids.shape == (5, 3, 8, 8) and cell_labels.shape == (5, 4)
    for g in range(5):
        assert len(set(cell_labels[g].tolist())) == 4  # distinct classes
        for k in range(4):
            row, column = k // 2, k % 2
            cell = grids[g, :, row * 4 : row * 4 + 4, column * 4 : column * 4 + 4]
            torch.testing.assert_close(cell, images[int(cell_labels[g, k])])


def test_make_grids_is_seeded_and_takes_the_most_confident_correct_images_first():
    images, labels = labelled_images(5, 3)
    confidences = torch.rand(len(labels), generator=torch.Generator().manual_seed(0)) / 2 + 0.5
    first = make_grids(images, labels, confidences, 2, 4, seed=1)
    again = make_grids(images, labels, confidences, 2, 4, seed=1)
    other = make_grids(images, labels, confidences, 2, 4, seed=2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])

    # class probabilities: the rank-0 image of every class is misclassified, the rank-1 image
    # is classified correctly and confidently, the rank-2 image correctly but not confidently
    probs = torch.zeros(len(labels), 5)
    rank = torch.arange(len(labels)) // 5
    wrong, right, unsure = rank == 0, rank == 1, rank == 2
    probs[wrong, (labels[wrong] + 1) % 5], probs[wrong, labels[wrong]] = 0.9, 0.05
    probs[right, labels[right]] = 0.95
    probs[unsure, labels[unsure]] = 0.45
    grids, cell_labels = make_grids(images, labels, probs, 2, 3, seed=0)
    cells = grids.unfold(2, 4, 4).unfold(3, 4, 4)[:, 0, :, :, 0, 0].flatten(1)
    torch.testing.assert_close(cells, cell_labels + 0.1)  # always the rank-1 image


def test_make_grids_needs_enough_qualifying_classes():
    images, labels = labelled_images(4, 2)
    confidences = torch.ones(len(labels))
    confidences[labels == 3] = 0.2  # class 3 never confident
    with pytest.raises(EvaluationError, match=r"needs 4 distinct classes.*only 3 class"):
        make_grids(images, labels, confidences, 2, 1)
    with pytest.raises(EvaluationError, match="n must be an integer >= 2"):
        make_grids(images, labels, confidences, 1, 1)
    with pytest.raises(EvaluationError, match="confidences"):
        make_grids(images, labels, confidences[:3], 2, 1)
    assert issubclass(EvaluationError, BcosifyError) and issubclass(EvaluationError, ValueError)


class ValueClassifier(nn.Module):
    """Classifies images filled with a value near their label: logits -10 (mean - c)^2."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.arange(num_classes).float())

    def forward(self, images: Tensor) -> Tensor:
        return -10 * (images.mean((1, 2, 3))[:, None] - self.centres) ** 2


class OracleExplainer:
    """All positive mass on the pixels holding the target class's image (value label + r/10)."""

    name = "oracle"

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        near = (inputs - target.view(-1, 1, 1, 1).float()).abs() < 0.35
        return near.float() - 0.5 * (~near).float()


class UniformExplainer:
    name = "uniform"

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        return torch.ones_like(inputs)


@pytest.mark.parametrize("n", [2, 3])
def test_grid_pointing_game_end_to_end(n):
    images, labels = labelled_images(10, 2, size=6)
    data = TensorDataset(images, labels)
    model = ValueClassifier(10)
    assert isinstance(OracleExplainer(), Explainer)
    perfect = grid_pointing_game(model, OracleExplainer(), data, n=n, num_grids=7, batch_size=9)
    assert isinstance(perfect, PointingGameResult) and perfect.grid == n
    assert perfect.scores.shape == (7, n * n)
    assert perfect.mean == pytest.approx(1.0) and perfect.quartiles == pytest.approx((1, 1, 1))
    assert torch.equal(labels[perfect.examples], perfect.cell_labels)
    uniform = grid_pointing_game(model, UniformExplainer(), data, n=n, num_grids=7, batch_size=5)
    assert uniform.mean == pytest.approx(1 / n**2)
    assert torch.equal(uniform.cell_labels, perfect.cell_labels)  # same seed, same grids
    assert f"{n}x{n} grid pointing game" in str(uniform)


def test_grid_pointing_game_takes_items_with_masks_and_honours_the_confidence_option():
    images, labels = labelled_images(4, 1, size=6)
    data = TensorDataset(images, labels, torch.ones(4, 6, 6, dtype=torch.bool))
    model = ValueClassifier(4)
    result = grid_pointing_game(model, OracleExplainer(), data, num_grids=2)
    assert result.mean == pytest.approx(1.0)
    # every logit is <= 0, so no sigmoid probability is above 0.5
    with pytest.raises(EvaluationError, match=r"only 0 class\(es\)"):
        grid_pointing_game(model, OracleExplainer(), data, num_grids=2, confidence="sigmoid")


# --- localisation in masks and deletion --------------------------------------------------------


def test_mask_localisation_by_hand():
    attributions = torch.zeros(3, 3, 2, 2)
    attributions[0, :, 0, 0] = 1.0  # 3 inside
    attributions[0, 0, 1, 1] = 1.0  # 1 outside
    attributions[1, 0, 1, 1] = -4.0  # negative only
    attributions[2, 1] = torch.tensor([[2.0, -1.0], [0.0, 2.0]])
    masks = torch.tensor([[[True, False], [False, False]]]).expand(3, 2, 2)
    expected = torch.tensor([0.75, 0.0, 0.5])
    torch.testing.assert_close(mask_localisation(attributions, masks), expected)
    torch.testing.assert_close(mask_localisation(attributions.sum(1), masks[:, None]), expected)
    with pytest.raises(EvaluationError, match="masks must be"):
        mask_localisation(attributions, masks[:, :1])


class OnePixel(nn.Module):
    """Two classes; the score of class 0 depends on pixel (1, 2) of channel 0 only."""

    def forward(self, images: Tensor) -> Tensor:
        evidence = 20 * images[:, 0, 1, 2] - 10
        return torch.stack([evidence, -evidence], 1)


def test_deletion_auc_is_lower_for_the_attribution_that_points_at_the_evidence():
    inputs = torch.ones(2, 3, 4, 4)
    right, wrong = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    right[1, 1, 2] = 5.0  # any channel: pixels are ranked by the channel sum
    wrong[0, 3, 3] = 5.0
    attributions = torch.stack([right, wrong])
    targets = torch.zeros(2, dtype=torch.long)
    curves = deletion_curves(OnePixel(), inputs, targets, attributions, steps=4)
    assert curves[0, 0] > 0.99 and curves[0, 1:].max() < 0.01  # gone with the first quarter
    aucs = deletion_auc(OnePixel(), inputs, targets, attributions, steps=4, batch_size=3)
    assert aucs.shape == (2,) and aucs[0] < 0.2 < aucs[1]
    # with the evidence as the baseline, deleting it changes nothing
    same = deletion_auc(OnePixel(), inputs, targets, attributions, baseline=torch.ones(3, 1, 1))
    torch.testing.assert_close(same, torch.full((2,), float(torch.sigmoid(torch.tensor(20.0)))))
    with pytest.raises(EvaluationError, match="shaped like the inputs"):
        deletion_auc(OnePixel(), inputs, targets, attributions[:, :, :2])
    with pytest.raises(EvaluationError, match="baseline"):
        deletion_auc(OnePixel(), inputs, targets, attributions, baseline=torch.ones(5))


def test_accuracy_reuses_validation():
    images, labels = labelled_images(5, 2)
    labels[0] = 3  # one wrong top-1, but within the top 5
    result = accuracy(ValueClassifier(5), TensorDataset(images, labels), batch_size=4)
    assert result == {"top1": pytest.approx(0.9), "top5": 1.0}
    hits = correct(ValueClassifier(5), TensorDataset(images, labels), batch_size=3)
    assert hits.dtype == torch.bool and hits.tolist() == [False] + [True] * 9
    assert correct(ValueClassifier(5), TensorDataset(images, labels), k=5).all()


# --- intervals -----------------------------------------------------------------------------------


def test_bootstrap_intervals_cover_the_true_mean_about_as_often_as_they_claim():
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for trial in range(200):
        sample = torch.randn(40, generator=generator) + 3.0
        interval = bootstrap_interval(sample, resamples=1000, seed=trial)
        assert interval.low < interval.mean < interval.high and interval.count == 40
        assert interval.mean == pytest.approx(float(sample.mean()))
        covered += interval.low <= 3.0 <= interval.high
    # a percentile bootstrap of 40 values is a little narrow; far from 95% would be a bug
    assert 0.88 <= covered / 200 <= 0.99
    # four times the values, half the width
    wide = bootstrap_interval(torch.randn(100, generator=generator))
    narrow = bootstrap_interval(torch.randn(400, generator=generator))
    ratio = (narrow.high - narrow.low) / (wide.high - wide.low)
    assert 0.38 < ratio < 0.62
    # seeded: the same values and seed give the same interval
    assert bootstrap_interval(sample, seed=5) == bootstrap_interval(sample, seed=5)
    assert bootstrap_interval([2.0, 2.0, 2.0]) == Interval(2.0, 2.0, 2.0, 0.95, 3)


def test_bootstrap_interval_refuses_bad_input():
    with pytest.raises(EvaluationError, match="at least one value"):
        bootstrap_interval([])
    with pytest.raises(EvaluationError, match="finite"):
        bootstrap_interval([1.0, float("nan")])
    with pytest.raises(EvaluationError, match="level"):
        bootstrap_interval([1.0, 2.0], level=95)
    with pytest.raises(EvaluationError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)


def test_intervals_compare_by_their_ends():
    high, low = Interval(0.8, 0.75, 0.85, 0.95, 9), Interval(0.7, 0.6, 0.76, 0.95, 9)
    assert not high.above(low) and not low.below(high)  # they overlap at 0.75 to 0.76
    lower = Interval(0.6, 0.5, 0.7, 0.95, 9)
    assert high.above(lower) and lower.below(high) and not lower.above(high)
    assert str(high) == "0.800 [0.750, 0.850]" and high.to_dict()["count"] == 9


def test_the_pointing_game_interval_resamples_grids_not_cells():
    # every grid scores all its cells alike: 10 grids of 1s and 10 of 0s
    scores = torch.cat([torch.ones(10, 4), torch.zeros(10, 4)])
    result = PointingGameResult.from_scores(scores, 2)
    torch.testing.assert_close(result.per_grid, scores.double().mean(1))
    grids = result.interval(seed=1)
    cells = bootstrap_interval(scores.flatten(), seed=1)  # what treating cells as independent gives
    assert grids.count == 20 and grids.mean == pytest.approx(0.5)
    assert (grids.high - grids.low) > 1.5 * (cells.high - cells.low)
    assert "95% interval" in str(result)


# --- explainers ----------------------------------------------------------------------------------


def module_state(model: nn.Module) -> list[tuple]:
    return [
        (name, m.training, {k: v.clone() for k, v in m.state_dict().items()})
        for name, m in model.named_modules()
    ]


def has_hooks(model: nn.Module) -> bool:
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, kind, None) for m in model.modules() for kind in kinds)


@pytest.mark.parametrize("kind", ["original", "bcos"])
@pytest.mark.parametrize("name", EXPLAINER_NAMES)
def test_every_explainer_gives_input_shaped_attributions_and_leaves_nothing_behind(
    models, kind, name
):
    model = models[kind]
    if name == "bcos" and kind == "original":
        with pytest.raises(EvaluationError, match=r"needs a B-cos model.*bcosify.convert"):
            build_explainer(name, model)
        return
    explainer = build_explainer(name, model, **FAST.get(name, {}))
    assert explainer.name == name and isinstance(explainer, Explainer)
    model.train()  # the explainer must evaluate in eval mode and give the flags back
    before = module_state(model)
    inputs = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 4])
    try:
        attributions = explainer.attribute(inputs, targets)
        after = module_state(model)
    finally:
        model.eval()
    assert attributions.shape == inputs.shape and attributions.dtype == torch.float32
    assert not attributions.requires_grad and attributions.isfinite().all()
    assert attributions.abs().sum() > 0
    assert inputs.grad is None and not inputs.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not has_hooks(model) and not is_explaining(model)
    for (name_b, training_b, state_b), (name_a, training_a, state_a) in zip(
        before, after, strict=True
    ):
        assert name_b == name_a and training_b == training_a
        for key in state_b:  # batch norm statistics untouched: evaluation mode throughout
            torch.testing.assert_close(state_b[key], state_a[key])


# every explainer on both models, but the B-cos explanation on the B-cos model only
EXPLAINED = [
    (kind, name)
    for kind in ("original", "bcos")
    for name in EXPLAINER_NAMES
    if (kind, name) != ("original", "bcos")
]


@pytest.mark.parametrize(("kind", "name"), EXPLAINED)
def test_every_explainer_gives_the_same_attributions_on_a_channels_last_model(models, kind, name):
    # the demo evaluates channels-last copies of its models (faster on a CPU)
    model = models[kind]
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    inputs = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 0, 4])
    default = build_explainer(name, model, **FAST.get(name, {})).attribute(inputs, targets)
    laid_out = build_explainer(name, last, **FAST.get(name, {})).attribute(inputs, targets)
    assert default.abs().sum() > 0
    torch.testing.assert_close(laid_out, default, rtol=1e-4, atol=1e-6)


def test_bcos_explainer_is_the_models_own_explanation(models):
    inputs, targets = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    attributions = build_explainer("bcos", models["bcos"]).attribute(inputs, targets)
    e = explain(models["bcos"], inputs, targets)
    assert_signal(e)
    torch.testing.assert_close(attributions, e.input_contributions)
    # the comparison can fail: another class's explanation is not this one
    other = explain(models["bcos"], inputs, targets.flip(0)).input_contributions
    assert_differs(other, e.input_contributions, rtol=1.3e-6, atol=1e-5)


def test_single_map_explainers_spread_the_map_over_the_channels(models):
    inputs, targets = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    for name in ("gradcam", "rise", "lime"):
        a = build_explainer(name, models["original"], **FAST.get(name, {})).attribute(
            inputs, targets
        )
        assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])


def test_gradcam_layer_skips_the_classifier_that_conversion_moved_before_the_pooling(models):
    example = torch.rand(1, 3, 16, 16)
    # conv 4, batch norm 5, ReLU 6: the rectified feature map, 8 x 8
    assert gradcam_layer(models["original"], example)[0] == "model.6"
    # the converted network runs its 1x1 classifier conv '9' last, after the ReLU '6'
    assert gradcam_layer(models["bcos"], example)[0] == "network.6"
    explainer = build_explainer("gradcam", models["bcos"], layer="network.0")
    explainer.attribute(example, torch.tensor([0]))
    assert explainer.options["layer"] == "network.0"
    with pytest.raises(EvaluationError, match=r"no submodule 'network.99'"):
        build_explainer("gradcam", models["bcos"], layer="network.99")
    with pytest.raises(EvaluationError, match=r"no layer with a 4-D output"):
        build_explainer("gradcam", nn.Sequential(nn.Flatten(), nn.Linear(12, 2))).attribute(
            torch.rand(1, 3, 2, 2), torch.tensor([0])
        )


def test_deeplift_refuses_a_reused_relu_with_a_clear_error():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu)
    model = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    explainer = build_explainer("deeplift", model)
    with pytest.raises(EvaluationError, match=r"'0.1' \(2 times\).*own module"):
        explainer.attribute(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    assert not has_hooks(model)


def test_occlusion_of_repeated_images_equals_captum_per_class(models):
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(1)
    images = torch.rand(2, 3, 12, 12)
    inputs, targets = images[[0, 1, 0, 0, 1]], torch.tensor([2, 2, 0, 4, 1])
    explainer = build_explainer("occlusion", models["original"], window=4, stride=2)
    together = explainer.attribute(inputs, targets)
    reference = captum.Occlusion(models["original"].eval())
    for i in range(len(inputs)):
        expected = reference.attribute(
            inputs[i : i + 1],
            sliding_window_shapes=(3, 4, 4),
            strides=(3, 2, 2),
            baselines=0.0,
            target=int(targets[i]),
        )
        torch.testing.assert_close(together[i : i + 1], expected, rtol=1e-4, atol=1e-6)


def test_rise_is_seeded_and_weighs_masks_by_the_class_probability(models):
    inputs, targets = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    options = {"n_masks": 30, "batch_size": 8}
    first = build_explainer("rise", models["original"], **options).attribute(inputs, targets)
    again = build_explainer("rise", models["original"], **{**options, "batch_size": 60})
    torch.testing.assert_close(first, again.attribute(inputs, targets))  # batching-independent
    other = build_explainer("rise", models["original"], **{**options, "seed": 1})
    assert not torch.allclose(first, other.attribute(inputs, targets))
    # an image explained for several classes is masked once; the result is per example
    repeated = inputs[[0, 0, 1, 0]]
    many = build_explainer("rise", models["original"], **options)
    together = many.attribute(repeated, torch.tensor([0, 3, 1, 2]))
    for i, (image, target) in enumerate(zip(repeated, (0, 3, 1, 2), strict=True)):
        alone = many.attribute(image[None], torch.tensor([target]))
        torch.testing.assert_close(together[i : i + 1], alone)
    assert not torch.allclose(together[0], together[1])
    # the model's probability of the one class it has is 1: the saliency is the mean mask / keep
    ones = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 1))
    single = build_explainer("rise", ones, n_masks=400, probability="softmax")
    mean_mask = single.attribute(inputs[:1], torch.tensor([0])).sum(1)
    assert mean_mask.mean().item() == pytest.approx(1.0, abs=0.05)
    # centred, a probability that no mask changes leaves nothing
    flat = build_explainer("rise", ones, n_masks=400, probability="softmax", centred=True)
    assert flat.attribute(inputs[:1], torch.tensor([0])).abs().max() < 1e-5
    # and otherwise the map moves by the mean probability times the mean mask
    centred = build_explainer("rise", models["original"], **options, centred=True)
    moved = first - centred.attribute(inputs, targets)
    assert (moved > 0).all()  # the mean probability is positive, and every pixel was kept
    assert moved.std() < moved.mean()  # nearly constant: the mean mask is nearly flat


def test_build_explainer_and_attribute_refuse_bad_requests(models):
    with pytest.raises(EvaluationError, match=r"unknown image explainer 'shap'.*saliency.*lime"):
        build_explainer("shap", models["original"])
    with pytest.raises(EvaluationError, match=r"no option.*n_step.*n_steps"):
        build_explainer("integrated_gradients", models["original"], n_step=10)
    with pytest.raises(EvaluationError, match="no options"):
        build_explainer("input_x_gradient", models["original"], steps=3)
    with pytest.raises(EvaluationError, match="positive integer"):
        build_explainer("rise", models["original"], n_masks=0)
    with pytest.raises(EvaluationError, match="'auto'"):
        build_explainer("rise", models["original"], probability="logits")
    explainer = build_explainer("saliency", models["original"])
    with pytest.raises(EvaluationError, match=r"\(N, C, H, W\)"):
        explainer.attribute(torch.rand(3, 16, 16), torch.tensor([0, 1, 2]))
    with pytest.raises(EvaluationError, match="one integer class index per image"):
        explainer.attribute(torch.rand(2, 3, 16, 16), torch.tensor([0, 1, 2]))
    assert isinstance(models["bcos"], BcosModel)


# --- LIME and GradCAM's layer ----------------------------------------------------------------


def test_lime_recovers_the_contributions_of_a_linear_model_square_by_square():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2, bias=False)).eval()
    image = torch.rand(1, 3, 16, 16)
    # on/off squares of a linear model: the score is exactly linear in them, so an unregularised
    # regression finds each square's contribution, whatever the weighting of the samples
    lime = build_explainer("lime", model, n_samples=120, patches=4, alpha=0.0)
    attributions = lime.attribute(image, torch.tensor([1]))
    per_pixel = (model[1].weight[1].detach().view(3, 16, 16) * image[0]).sum(0)
    expected = per_pixel.view(4, 4, 4, 4).sum((1, 3))  # (square row, square column)
    squares = attributions[0].sum(0).view(4, 4, 4, 4)
    assert torch.equal(squares, squares[:, :1, :, :1].expand_as(squares))  # constant per square
    torch.testing.assert_close(squares[:, 0, :, 0], expected, rtol=1e-4, atol=1e-4)
    # ridge regularisation shrinks the coefficients towards 0
    shrunk = build_explainer("lime", model, n_samples=120, patches=4, alpha=50.0)
    assert shrunk.attribute(image, torch.tensor([1])).abs().sum() < attributions.abs().sum()


class CountingModel(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, 0

    def forward(self, images: Tensor) -> Tensor:
        self.seen += len(images)
        return self.model(images)


def test_lime_runs_each_distinct_image_once_and_is_seeded(models):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    inputs, targets = images[[0, 1, 0, 0]], torch.tensor([2, 2, 0, 4])
    counting = CountingModel(models["original"])
    options = {"n_samples": 30, "patches": 4, "batch_size": 8}
    together = build_explainer("lime", counting, **options).attribute(inputs, targets)
    assert counting.seen == 2 * 30  # two distinct images, 30 perturbations each
    alone = build_explainer("lime", models["original"], **options)
    for i in range(len(inputs)):
        torch.testing.assert_close(
            together[i : i + 1], alone.attribute(inputs[i : i + 1], targets[i : i + 1])
        )
    assert not torch.allclose(together[0], together[2])  # other class, other explanation
    other = build_explainer("lime", models["original"], **{**options, "seed": 1})
    assert not torch.allclose(together, other.attribute(inputs, targets))
    with pytest.raises(EvaluationError, match="patches"):
        build_explainer("lime", models["original"], patches=32).attribute(inputs, targets)
    with pytest.raises(EvaluationError, match="kernel_width"):
        build_explainer("lime", models["original"], kernel_width=0.0)


def test_gradcam_takes_the_deepest_feature_map_with_at_least_7x7_outputs():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 28
        nn.ReLU(),
        nn.MaxPool2d(2),  # 14
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),  # a 7x7 block
        nn.MaxPool2d(2),  # 3
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    example = torch.rand(1, 3, 28, 28)
    assert gradcam_layer(model, example)[0] == "5"  # the block, after its ReLU
    assert gradcam_layer(model, example, min_resolution=2)[0] == "8"  # 3 x 3; the pool is 1 x 1
    assert gradcam_layer(model, example, min_resolution=10)[0] == "4"
    # nothing fine enough: the last of the finest
    assert gradcam_layer(model, example, min_resolution=100)[0] == "1"
    explainer = build_explainer("gradcam", model, min_resolution=10)
    explainer.attribute(example, torch.tensor([0]))
    assert explainer.options["layer"] == "4"
