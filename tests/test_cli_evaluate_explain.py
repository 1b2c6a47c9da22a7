"""bcosify evaluate and explain: devices, batches, thresholds, seeds, progress, settings in the
JSON, class names, and the official B-cos v2 models (bcos:<arch>)."""

from __future__ import annotations

import json

import pytest
import torch
from commands import run_cli
from PIL import Image

import bcosify
from bcosify.cli import explain as explain_command
from bcosify.data import SHAPES


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official B-cos v2 ResNet-18 (random weights) for the 10 shapes, saved by bcosify."""
    torch.manual_seed(0)
    model = bcosify.models.create("bcos:resnet18", num_classes=len(SHAPES))
    folder = tmp_path_factory.mktemp("official") / "resnet18"
    return bcosify.models.save_model(model, folder, class_names=list(SHAPES))


def test_evaluate_records_its_settings_and_shows_progress(official, tmp_path):
    out = tmp_path / "results.json"
    argv = ["evaluate", "--model", str(official), "--data", "synthetic", "--image-size", "32"]
    argv += ["--num-examples", "12", "--images", "5", "--grids", "2", "--batch-size", "2"]
    argv += ["--threshold", "0.0", "--seed", "3", "--device", "cpu", "--out", str(out)]
    status, printed, stderr = run_cli(*argv)
    assert status == 0, stderr
    results = json.loads(out.read_text())
    assert results["bcosify_version"] == bcosify.__version__
    assert results["settings"] == {
        "image_size": 32, "num_examples": 12, "images": 5, "grids": 2, "threshold": 0.0,
        "smooth": 0, "batch_size": 2, "seed": 3, "device": "cpu", "explainers": None,
        "templates": results["settings"]["templates"], "probe_split": None,
    }  # fmt: skip
    # an official B-cos model is explained with its own explanation by default
    assert list(results["explanations"]) == ["bcos"]
    entry = results["explanations"]["bcos"]
    assert 0.0 <= entry["mask_localisation"] <= 1.0 and 0.0 <= entry["deletion_auc"] <= 1.0
    # a random model classifies too few images for a 2 x 2 grid: the error says so, with the
    # threshold asked for
    assert entry["pointing_game_2x2"] is None
    assert "confidence > 0.0" in entry["pointing_game_error"]
    assert "bcos" in stderr and "4/4" in stderr  # the pointing game, ceil(5 / 2) image batches
    assert "accuracy: top-1" in printed
    # a B-cos model's colour fidelity: measured on the images it gets right, or why not
    colour = results["colour_fidelity"]
    if "error" in colour:
        assert f"colour fidelity: no measure: {colour['error']}" in printed
    else:
        assert 0 <= colour["colour_error"] <= 1 and 1 <= colour["images"] <= 5
        assert 0 <= colour["rounded_reference"] <= 0.5
        assert f"colour fidelity: error {colour['colour_error']:.3f}" in printed


def test_evaluate_fits_a_linear_probe_on_another_split(official, tmp_path):
    out = tmp_path / "results.json"
    argv = ["evaluate", "--model", str(official), "--data", "synthetic", "--image-size", "32"]
    argv += ["--num-examples", "12", "--images", "2", "--grids", "1", "--out", str(out)]
    status, printed, stderr = run_cli(*argv, "--probe-split", "train")
    assert status == 0, stderr
    probe = json.loads(out.read_text())["linear_probe"]["model"]
    assert probe["num_train"] == 12 and probe["num_test"] == 12 and 0 <= probe["top1"] <= 1
    assert probe["features"] == 512  # the input of the ResNet-18's classifier
    assert "model: linear probe: top-1" in printed
    status, _, stderr = run_cli(*argv, "--probe-split", "val")
    assert status == 1 and "is the evaluated split" in stderr and "Traceback" not in stderr


def test_evaluate_smooths_every_map_before_the_pointing_game_and_localisation(
    official, tmp_path, monkeypatch
):
    from bcosify.cli import evaluate as evaluate_command

    smoothing: dict[str, list[int]] = {"grid_pointing_game": [], "mask_localisation": []}
    for name, used in smoothing.items():
        real = getattr(evaluate_command, name)

        def recording(*args, _real=real, _used=used, **kwargs):
            _used.append(kwargs["smooth"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(evaluate_command, name, recording)
    argv = ["evaluate", "--model", str(official), "--data", "synthetic", "--image-size", "32"]
    argv += ["--num-examples", "12", "--images", "6", "--grids", "1", "--threshold", "0.0"]
    argv += ["--explainers", "bcos", "saliency"]
    results, printed = {}, {}
    for k in (0, 5):
        out = tmp_path / f"smooth{k}.json"
        status, printed[k], stderr = run_cli(*argv, "--smooth", str(k), "--out", str(out))
        assert status == 0, stderr
        results[k] = json.loads(out.read_text())
    assert smoothing == {"grid_pointing_game": [0, 0, 5, 5], "mask_localisation": [0, 0, 5, 5]}
    assert results[5]["settings"]["smooth"] == 5
    assert "averaged over 5 x 5 windows" in printed[5] and "averaged" not in printed[0]
    for name in ("bcos", "saliency"):  # the scores are the smoothed maps'
        inside = [results[k]["explanations"][name]["mask_localisation"] for k in (0, 5)]
        assert inside[0] != pytest.approx(inside[1], abs=1e-4)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threshold", "1.5", "probability in [0, 1)"),
        ("--batch-size", "0", "--batch-size"),
        ("--device", "tpu9", "unknown device 'tpu9'"),
        ("--smooth", "-1", "at least 0"),
    ],
)
def test_evaluate_bad_settings_are_one_line(official, flag, value, message):
    argv = ["evaluate", "--model", str(official), "--data", "synthetic", flag, value]
    status, _, stderr = run_cli(*argv)
    assert status == 2 and message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 3  # usage + error


def test_explain_batches_names_classes_and_shows_progress(tmp_path, monkeypatch):
    names = [f"shape{i}" for i in range(4)]
    torch.manual_seed(0)
    model, _ = bcosify.convert(
        bcosify.models.create("bcosify:small_cnn", num_classes=4), class_names=names
    )
    folder = model.save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i, size in enumerate((24, 24, 24, 32, 24)):
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"{i}.png")
    (images / "5.png").write_text("not an image")
    batches, titles = [], []
    explain = explain_command.explain

    def recording_explain(model, inputs, target=None):
        batches.append(len(inputs))
        return explain(model, inputs, target=target)

    figure = explain_command.explanation_figure

    def recording_figure(e, index, **kwargs):
        made = figure(e, index, **kwargs)
        titles.append(made.get_suptitle())
        return made

    monkeypatch.setattr(explain_command, "explain", recording_explain)
    monkeypatch.setattr(explain_command, "explanation_figure", recording_figure)
    out = tmp_path / "out"
    argv = ["explain", "--model", str(folder), "--image", str(images), "--out", str(out)]
    status, printed, stderr = run_cli(*argv, "--batch-size", "2")
    assert status == 1 and "5.png" in stderr  # the broken file is named, the others done
    # one size per batch, at most 2 images: 0-1, 2, 3 (32 px), 4
    assert batches == [2, 1, 1, 1]
    assert "6/6" in stderr  # the progress bar counts every file, the broken one too
    predicted = [line.split("class ")[1].split(",")[0] for line in printed.splitlines()]
    assert len(predicted) == 5 and set(predicted) <= set(names)
    assert [t.split(" (")[0] for t in titles] == [f"class {p}" for p in predicted]
    assert len(list(out.iterdir())) == 15


def test_explain_takes_an_official_model(official, tmp_path):
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    argv = ["explain", "--model", str(official), "--image", str(tmp_path / "red.png")]
    argv += ["--image-size", "32", "--out", str(tmp_path / "out"), "--no-progress"]
    status, printed, stderr = run_cli(*argv)
    assert status == 0, stderr
    assert "completeness residual" in printed and any(name in printed for name in SHAPES)
