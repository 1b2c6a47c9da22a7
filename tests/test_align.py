"""Beyond the paper: calibration after conversion, label-free alignment, linear probes."""

from __future__ import annotations

import json

import pytest
import torch
from nets import keep_signal_alive
from torch import nn

import bcosify
from bcosify.cli.main import main
from bcosify.convert import calibrate
from bcosify.errors import CheckpointError, UsageError
from bcosify.evaluate import linear_probe
from bcosify.models import create
from bcosify.train import Alignment, AlignmentConfig, align, alignment_paths, get_recipe


def randomised(name: str, **kwargs) -> nn.Module:
    from test_convert import randomise_statistics

    torch.manual_seed(0)
    return randomise_statistics(create(name, **kwargs))


def spread(model: nn.Module, x: torch.Tensor) -> float:
    """How much the logits differ between classes and images: 0 for a dead model."""
    with torch.no_grad():
        logits = model.eval()(x)
    return float((logits - logits.mean()).abs().max())


def test_calibrated_norms_bring_a_dead_converted_model_back_and_keep_it_exact():
    x = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model, _ = bcosify.convert(randomised("torchvision:resnet50", num_classes=10))
    assert spread(model, x) < 1e-3  # the logit bias and nothing else
    result = calibrate(model, x)
    assert (result.method, result.layers, result.images) == ("norms", 53, 8)
    assert spread(model, x) > 1e-2
    e = bcosify.explain(model, x)
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert not model.training


def test_lsuv_calibration_for_a_network_without_batch_norms():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model, _ = bcosify.convert(randomised("torchvision:vgg11", num_classes=5))
    with pytest.raises(UsageError, match="no B-cos batch norm"):
        calibrate(model, x, method="norms")
    result = calibrate(model, x)  # auto: lsuv
    assert result.method == "lsuv" and result.layers == 11
    outputs = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, out, m_=layer: outputs.setdefault(m_, out))
        for layer in model.modules()
        if isinstance(layer, (bcosify.nn.BcosConv2d, bcosify.nn.BcosLinear))
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    rms = [float(out.pow(2).mean().sqrt()) for out in outputs.values()]
    assert all(0.5 < r < 2.0 for r in rms), rms  # every layer close to unit RMS


def test_convert_calibrates_when_given_images_and_the_cli_does_with_calibrate(tmp_path, capsys):
    x = torch.rand(4, 3, 32, 32)
    _, report = bcosify.convert(randomised("torchvision:resnet18", num_classes=3), calibrate=x)
    assert any(note.startswith("calibrated (norms)") for note in report.notes)
    argv = ["convert", "--model", "torchvision:resnet18", "--num-classes", "3"]
    argv += ["--calibrate", "6", "--image-size", "32", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    assert "calibrated (norms): 20 batch norms re-estimated on 6 images" in capsys.readouterr().out
    loaded = bcosify.load(tmp_path / "m")  # the calibrated statistics are saved
    assert spread(loaded, torch.rand(2, 3, 32, 32)) > 0


def test_alignment_paths_are_spread_over_the_depth():
    vit = create("timm:vit_tiny_patch16_224", img_size=32, num_classes=3).eval()
    assert alignment_paths(vit, lambda: vit(torch.rand(1, 3, 32, 32))) == (
        "blocks.3",
        "blocks.7",
        "blocks.11",
    )
    net = create("torchvision:efficientnet_b0", num_classes=3).eval()
    paths = alignment_paths(net, lambda: net(torch.rand(1, 3, 32, 32)), count=2)
    assert paths == ("features.4", "features.8")  # of features.0 to features.8


class Images(torch.utils.data.Dataset):
    """Images and a label that must not be read: alignment uses no labels."""

    def __init__(self, n: int, size: int = 32) -> None:
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], -1  # not a class: a label read would break the loss


def test_alignment_trains_without_labels_records_its_paths_and_lowers_its_loss(tmp_path):
    original = randomised("torchvision:resnet18", num_classes=4).eval()
    data = Images(16)
    recipe = get_recipe("bcosify-aloe", epochs=3, batch_size=8, lr=1e-3, image_size=32)
    result = align(original, data, tmp_path / "run", recipe=recipe, val_data=data, progress=False)
    assert result.config.paths == ("layer2", "layer3", "layer4")
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert saved["align_paths"] == ["layer2", "layer3", "layer4"]
    losses = [epoch["val_loss"] for epoch in result.train.history]
    assert losses[-1] < losses[0], losses
    assert {"val_cosine", "val_cosine_layer2", "val_cosine_layer4"} <= set(result.train.history[0])
    student = result.model
    assert isinstance(student, bcosify.BcosModel)
    assert not any(m._forward_hooks for m in student.modules())  # the hooks are gone
    with pytest.raises(CheckpointError, match="other paths"):
        align(
            original,
            data,
            tmp_path / "run",
            progress=False,
            recipe=get_recipe(
                "bcosify-aloe", epochs=2, batch_size=8, image_size=32, align_paths=("layer1",)
            ),
        )


def test_the_alignment_loss_is_zero_for_the_teacher_against_itself():
    net = create("torchvision:resnet18", num_classes=3).eval()
    objective = Alignment(net, AlignmentConfig(("layer1", "layer3")), net, net)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        terms = objective.terms(net(x), x)
    assert set(terms) == {"output", "layer1", "layer3"}
    assert all(float(v) < 1e-6 for v in terms.values()), terms
    objective.close()


def test_bcosify_train_aligns_a_saved_ordinary_model(tmp_path, capsys):
    standard = ["train", "--model", "bcosify:small_cnn", "--data", "synthetic", "--recipe"]
    common = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--num-train", "16"]
    common += ["--num-val", "8", "--no-progress"]
    assert main([*standard, "standard", *common, "--out", str(tmp_path / "std")]) == 0
    argv = ["train", "--model", str(tmp_path / "std" / "model"), "--data", "synthetic"]
    argv += ["--recipe", "bcosify-aloe", *common, "--out", str(tmp_path / "align")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "aligned the output and" in out and "finished after 2 steps" in out
    model = bcosify.load(tmp_path / "align" / "model")
    e = bcosify.explain(
        keep_signal_alive(model, torch.rand(2, 3, 32, 32)), torch.rand(2, 3, 32, 32)
    )
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all()


def test_linear_probe_on_a_clip_tower_and_a_classifier():
    from test_clip import clip_pair

    torch.manual_seed(0)
    pair = clip_pair("vit")
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        target = pair.original.encode_image(x)[:, 0] > 0  # a linear function of the features
    data = torch.utils.data.TensorDataset(x, target.long())
    teacher = linear_probe(pair.original, data, data)
    assert teacher.top1 > 0.9 and teacher.features == 16
    student = linear_probe(pair, data, data)
    assert 0 <= student.top1 <= 1 and student.num_test == 24
    classifier = linear_probe(randomised("torchvision:resnet18", num_classes=3).eval(), data, data)
    assert classifier.features == 512


def test_the_alignment_benchmark_runs_in_quick_mode(capsys, monkeypatch):
    import importlib
    import sys
    from pathlib import Path

    # imported as the scripts import each other: from their folder
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        assert importlib.import_module("bench_align").main(["--quick"]) == 0
    finally:
        for name in ("common", "bench_align"):
            sys.modules.pop(name, None)
    out = capsys.readouterr().out
    assert "| norms |" in out and "| aligned, no labels |" in out and "Targets:" in out
