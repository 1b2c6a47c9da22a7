"""B-cosifying a model from any folder of images, in one command, within a time budget."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import bcosify
from bcosify.cli.main import main
from bcosify.models import class_names_of, create
from bcosify.train import Alignment, AlignmentConfig, align, get_recipe
from bcosify.train.checkpoint import load_checkpoint
from bcosify.train.prepare import Normalized

# the layer fit on 4 crops: its own tests (test_reconstruct.py) fit on more
TINY = ["--image-size", "32", "--batch-size", "4", "--set", "epoch_size=8", "--set",
        "align_calibration=4", "--no-progress"]  # fmt: skip


def photos(folder: Path, count: int, seed: int = 0) -> Path:
    """A folder of ``count`` random images of a few sizes, in two subfolders (no classes)."""
    generator = torch.Generator().manual_seed(seed)
    for i in range(count):
        size = (36 + 4 * (i % 3), 40)
        pixels = (torch.rand(*size, 3, generator=generator) * 255).to(torch.uint8).numpy()
        (folder / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"part{i % 2}" / f"{i}.png")
    return folder


def align_command(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", "bcosify-align", "--model", "torchvision:resnet18", "--data",
            str(data), "--out", str(out), *TINY, *extra]  # fmt: skip


def test_one_command_aligns_any_folder_within_its_time_budget(tmp_path, capsys):
    data = photos(tmp_path / "photos", 10)
    budget = 6.0
    assert main(align_command(data, tmp_path / "run", "--time-budget", str(budget))) == 0
    out = capsys.readouterr().out
    assert "finished after" in out
    assert "agreement with the original on 1 held-out images: top-1" in out
    state = load_checkpoint(tmp_path / "run")
    # the training clock (steps, the last validation, the checkpoint) stays within the budget
    assert 0 < state["elapsed"] <= budget, state["elapsed"]
    assert state["step"] >= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    last = records[-1]
    assert 0 <= last["val_agreement"] <= 1 and 0 <= last["val_top5_overlap"] <= 1
    model = bcosify.load(tmp_path / "run" / "model")
    assert isinstance(model, bcosify.BcosModel)
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert recipe["time_budget"] == budget


def test_the_model_is_written_when_max_steps_stops_the_run(tmp_path, capsys):
    data = photos(tmp_path / "photos", 6)
    assert main(align_command(data, tmp_path / "run", "--max-steps", "1")) == 0
    assert "stopped (resume by running the same command) after 1 steps" in capsys.readouterr().out
    assert isinstance(bcosify.load(tmp_path / "run" / "model"), bcosify.BcosModel)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert "val_agreement" in records[-1]


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],  # 11 s each
)
def test_the_model_is_written_when_a_signal_stops_the_run(tmp_path, sig):
    data = photos(tmp_path / "photos", 6)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "bcosify", *align_command(data, out, "--epochs", "100000")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(sig)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, stdout
    assert "agreement with the original" in stdout
    assert isinstance(bcosify.load(out / "model"), bcosify.BcosModel)


def test_steps_are_random_crops_whatever_the_size_of_the_folder(tmp_path):
    original = create("torchvision:resnet18", num_classes=4)
    recipe = get_recipe(
        "bcosify-align", epochs=1, batch_size=4, image_size=32, epoch_size=12, align_calibration=4
    )
    steps = []
    for count in (2, 40):
        data = bcosify.data.UnlabelledImages(photos(tmp_path / f"p{count}", count), 32)
        result = align(original, data, tmp_path / f"run{count}", recipe=recipe, progress=False)
        steps.append(result.train.step)
    assert steps == [3, 3]


def test_teacher_forcing_feeds_each_aligned_module_the_originals_input():
    torch.manual_seed(0)
    original = create("torchvision:resnet18", num_classes=4).eval()
    student, _ = bcosify.convert(original)
    teacher = Normalized(original, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    config = AlignmentConfig(("layer2", "layer3"), features="mse", forcing=0.5)
    objective = Alignment(teacher, config, student.network, original, student=student)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        root.layer3.register_forward_pre_hook(lambda m, args, k=name: seen.__setitem__(k, args[0]))
        for name, root in (("student", student.network), ("teacher", original))
    ]
    images = torch.rand(2, 3, 32, 32)
    objective.progress(0.0)  # forced with probability 1
    student.train()
    terms = objective.terms(student(images), images)
    assert torch.equal(seen["student"], seen["teacher"])
    assert set(terms) == {"output", "layer2", "layer3"}
    objective.progress(0.5)  # the end of the forcing: probability 0
    assert objective.forcing_probability == 0.0
    student(images)
    assert not torch.equal(seen["student"], seen["teacher"])
    objective.close()
    for hook in hooks:
        hook.remove()
    assert not any(m._forward_pre_hooks for m in student.modules())


def test_imagenet_weights_name_their_classes_and_the_converted_model_keeps_them(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file(create("timm:test_efficientnet").state_dict(), weights)
    original = create("timm:test_efficientnet", weights=weights)
    names = class_names_of(original)
    assert names is not None and len(names) == 1000 and names[1] == "goldfish"
    assert class_names_of(create("timm:test_efficientnet")) is None  # random weights: unknown
    model, _ = bcosify.convert(original)
    assert class_names_of(model) == names
    small = create("torchvision:resnet18", num_classes=3)
    save_file(small.state_dict(), tmp_path / "small.safetensors")
    assert (
        class_names_of(
            create("torchvision:resnet18", num_classes=3, weights=tmp_path / "small.safetensors")
        )
        is None
    )


def test_norms_fitted_to_the_original_keep_an_exact_conversion_exact_and_help_at_larger_b():
    from test_convert import randomise_statistics

    from bcosify.convert import calibrate

    torch.manual_seed(0)
    original = randomise_statistics(create("torchvision:resnet18", num_classes=5)).eval()
    normalised = Normalized(original, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = normalised(images)
    exact, _ = bcosify.convert(original, b=1.0, keep_bias=True)
    result = calibrate(exact, images, method="original", original=original)
    assert (result.method, result.layers) == ("original", 20)
    with torch.no_grad():
        assert torch.allclose(exact(images), target, atol=1e-4)
    errors = []
    for fitted in (False, True):
        model, _ = bcosify.convert(original, b=1.5, keep_bias=True)
        if fitted:
            calibrate(model, images, method="original", original=original)
        with torch.no_grad():
            errors.append(float((model.eval()(images) - target).pow(2).mean()))
    assert errors[1] < 0.75 * errors[0], errors  # measured 0.43 against 0.81
    e = bcosify.explain(model, images[:2])  # the biases are named constants: still exact
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert "network.layer1.0.bn1.bias" in e.constants


def test_an_alignment_at_b_1_with_biases_and_fitted_frozen_norms_stays_the_original(tmp_path):
    from test_convert import randomise_statistics

    torch.manual_seed(0)
    original = randomise_statistics(create("torchvision:resnet18", num_classes=6)).eval()
    data = bcosify.data.UnlabelledImages(photos(tmp_path / "photos", 8), 32)
    recipe = get_recipe(
        "bcosify-align", b=1.0, keep_bias=True, norms="frozen", align_calibration=4,
        epochs=1, batch_size=4, epoch_size=8, image_size=32, loss="kl", align_features="mse",
        optimizer="sgd",  # Adam would turn the rounding noise of a zero gradient into steps
    )  # fmt: skip
    result = align(original, data, tmp_path / "run", recipe=recipe, val_data=data, progress=False)
    last = result.train.history[-1]
    assert last["val_agreement"] == 1.0 and last["val_loss"] < 1e-6, last
    images = torch.stack([data[i][0] for i in range(4)])
    normalised = Normalized(original, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        assert torch.allclose(result.model.eval()(images), normalised(images), atol=1e-4)
    e = bcosify.explain(result.model, images)
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert "network.fc.bias" in e.constants
