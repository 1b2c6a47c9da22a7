"""The command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from commands import run_cli
from nets import assert_signal, keep_signal_alive
from PIL import Image

import bcosify
from bcosify.cli import main
from bcosify.errors import BcosifyError, ModelSourceError


def test_example_trains_explains_and_writes_pictures(tmp_path, capsys):
    assert main(["example", "--out", str(tmp_path), "--steps", "3", "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "completeness" in out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "0_colour.png",
        "0_contributions.png",
        "0_figure.png",
        "1_colour.png",
        "1_contributions.png",
        "1_figure.png",
    ]


def test_python_dash_m_and_help():
    result = subprocess.run(
        [sys.executable, "-m", "bcosify", "--help"], capture_output=True, text=True, check=True
    )
    assert "example" in result.stdout


# --- every user mistake is one line and a non-zero exit, never a traceback ---------------------

TRAIN = ["train", "--model", "bcosify:small_cnn", "--data", "synthetic", "--recipe", "standard"]
TRAIN += ["--image-size", "16", "--batch-size", "8", "--num-train", "16", "--num-val", "8"]
TRAIN += ["--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model, _ = bcosify.convert(bcosify.models.create("bcosify:small_cnn", num_classes=3))
    model.save_pretrained(root / "bcos")
    (root / "a-file").write_text("not a folder")
    (root / "weights.pt").write_bytes(b"")
    for name, text in {
        "broken": "{not json",
        "list": "[1, 2]",
        "bad-options": None,
        "bad-kwargs": None,
    }.items():
        (root / name).mkdir()
        if text is None:
            config = json.loads((root / "bcos" / "config.json").read_text())
            if name == "bad-options":
                config["options"]["b"] = "two"
            else:
                config["source_kwargs"] = {"num_classes": "three"}
            text = json.dumps(config)
        (root / name / "config.json").write_text(text)
    Image.new("RGB", (20, 20), "red").save(root / "image.png")
    return root


CUDA = torch.cuda.is_available()
MISTAKES = [
    # (argv, exit status, a phrase of the one-line message)
    ([*TRAIN, "--set", "lr=abc"], 2, "lr must be a number, got 'abc'"),
    ([*TRAIN, "--set", "weight_decay=-1"], 2, "weight_decay must be zero or more"),
    ([*TRAIN, "--set", "num_workers=-1"], 2, "num_workers must be zero or more"),
    ([*TRAIN, "--set", "warmup_steps=-1"], 2, "warmup_steps must be zero or more"),
    ([*TRAIN, "--set", "agc_clip=-1"], 2, "agc_clip must be positive"),
    ([*TRAIN, "--set", "b_ramp_steps=-1"], 2, "b_ramp_steps must be zero or more"),
    ([*TRAIN, "--set", "epochs=1.5"], 2, "epochs must be a whole number, got 1.5"),
    ([*TRAIN, "--set", "lr=Infinity"], 2, "lr must be a finite number"),
    ([*TRAIN, "--max-steps", "-1"], 2, "--max-steps: must be a whole number of at least 1"),
    ([*TRAIN, "--max-steps", "0"], 2, "--max-steps: must be a whole number of at least 1"),
    ([*TRAIN, "--num-val", "0"], 2, "--num-val: must be a whole number of at least 1"),
    ([*TRAIN, "--device", "tpu9"], 2, "unknown device 'tpu9'"),
    (
        ["train", "--model", "x", "--data", "x.jsonl", "--recipe", "bcosify-lm", "--compile"],
        2,
        "--compile is for training image models",
    ),
    (
        ["train", "--model", "x", "--data", "synthetic", "--recipe", "bcosify-clip", "--compile"],
        2,
        "without it for the bcosify-clip recipe",
    ),
    pytest.param(
        [*TRAIN, "--device", "cuda"],
        2,
        "no CUDA GPU",
        marks=pytest.mark.skipif(CUDA, reason="this machine has a GPU"),
    ),
    ([*TRAIN, "--out", "{root}/a-file"], 2, "is a file; pass a folder"),
    (["train", *TRAIN[1:3], "--model", "{root}/weights.pt", *TRAIN[3:]], 2, "--weights"),
    (
        ["convert", "--model", "bcosify:small_cnn", "--b", "0.5"],
        2,
        "b must be a number from 1 to 10",
    ),
    (
        ["convert", "--model", "bcosify:small_cnn", "--b", "nan"],
        2,
        "b must be a number from 1 to 10",
    ),
    (["convert", "--model", "bcosify:small_cnn", "--mean", "0.5", "0.5"], 2, "one value per"),
    (["convert", "--model", "bcosify:small_cnn", "--std", "0", "0", "0"], 2, "std must be"),
    (["convert", "--model", "bcosify:small_cnn", "--std", "nan"], 2, "must be a finite number"),
    (["convert", "--model", "{root}/bcos"], 2, "B-cos model already"),
    (["convert", "--model", "{root}/weights.pt"], 2, "--weights {root}/weights.pt"),
    (["evaluate", "--model", "{root}/broken", "--data", "synthetic"], 1, "not a valid"),
    (["evaluate", "--model", "{root}/list", "--data", "synthetic"], 1, "no JSON object"),
    (["explain", "--model", "{root}/broken", "--image", "{root}/image.png"], 1, "not a valid"),
    (["explain", "--model", "{root}/bad-options", "--image", "{root}/image.png"], 1, "not a valid"),
    (
        ["explain", "--model", "{root}/bad-kwargs", "--image", "{root}/image.png"],
        1,
        "source_kwargs.num_classes: expected a whole number",
    ),
    (["evaluate", "--model", "{root}/bcos", "--data", "synthetic", "--images", "0"], 2, "--images"),
    (["evaluate", "--model", "{root}/bcos", "--data", "synthetic", "--out", "{root}"], 2, "folder"),
]


@pytest.mark.parametrize(("argv", "status", "phrase"), MISTAKES)
def test_a_mistake_is_one_line_and_an_exit_status(files, argv, status, phrase):
    argv = [a.format(root=files) for a in argv]
    if argv[0] in ("train", "convert", "explain") and "--out" not in argv:
        argv += ["--out", str(files / "out")]
    got, _, stderr = run_cli(*argv)
    lines = stderr.strip().splitlines()
    assert (got, len(lines)) == (status, 1), stderr
    assert phrase.format(root=files) in lines[0] and "Traceback" not in stderr
    assert lines[0].startswith(f"bcosify {argv[0]}: error: ")


def test_debug_shows_the_traceback(files, monkeypatch):
    argv = ["convert", "--model", "bcosify:small_cnn", "--b", "0.5", "--out", str(files / "o")]
    with pytest.raises(BcosifyError, match="b must be a number from 1 to 10"):
        main([*argv, "--debug"])
    monkeypatch.setenv("BCOSIFY_DEBUG", "1")
    with pytest.raises(BcosifyError, match="b must be a number from 1 to 10"):
        main(argv)


def test_offline_torchvision_weights_say_how_to_pass_a_file(tmp_path, monkeypatch):
    import urllib.error

    import torch.hub

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelSourceError, match=r"not in the cache .*--weights resnet18-"):
        bcosify.models.create("torchvision:resnet18", weights="IMAGENET1K_V1")
    status, _, stderr = run_cli(
        "convert", "--model", "torchvision:resnet18", "--weights", "IMAGENET1K_V1", "--out",
        str(tmp_path / "out"),
    )  # fmt: skip
    assert status == 2 and "could not be downloaded" in stderr and "Traceback" not in stderr


def test_convert_takes_a_saved_model_folder_as_train_does(tmp_path):
    original = bcosify.models.create("bcosify:small_cnn", num_classes=3)
    bcosify.models.save_model(original, tmp_path / "ordinary", class_names=["a", "b", "c"])
    status, _, stderr = run_cli(
        "convert", "--model", str(tmp_path / "ordinary"), "--out", str(tmp_path / "bcos")
    )
    assert status == 0, stderr
    model = bcosify.load(tmp_path / "bcos")
    assert isinstance(model, bcosify.BcosModel) and model.config.class_names == ["a", "b", "c"]
    # that model, converted: its weights are the ones bcosify.convert gives (random, so each counts)
    expected = bcosify.convert(original)[0].state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    x = torch.rand(2, 3, 16, 16)
    e = bcosify.explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all()
    assert Path(tmp_path / "bcos" / "config.json").is_file()


# --- classes and images -----------------------------------------------------------------------


def bcos_small_cnn(tmp_path: Path, num_classes: int, names: list[str] | None) -> Path:
    torch.manual_seed(0)
    model, _ = bcosify.convert(bcosify.models.create("bcosify:small_cnn", num_classes=num_classes))
    model.config.class_names = names
    return model.save_pretrained(tmp_path / f"model{num_classes}")


def test_evaluate_scores_a_folder_against_the_models_class_indices(tmp_path):
    names = [f"c{i}" for i in range(10)]
    model_dir = bcos_small_cnn(tmp_path, 10, names)
    generator = torch.Generator().manual_seed(0)
    for name in ("c3", "c7"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=generator, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "data" / name / f"{i}.png")
    argv = ["evaluate", "--model", str(model_dir), "--image-size", "16", "--images", "2"]
    argv += ["--grids", "1", "--out", str(tmp_path / "results.json"), "--data"]
    status, _, stderr = run_cli(*argv, str(tmp_path / "data"))
    assert status == 0, stderr
    top1 = json.loads((tmp_path / "results.json").read_text())["accuracy"]["top1"]
    data = bcosify.data.build_dataset(tmp_path / "data", "val", 16, classes=names)
    model = bcosify.load(model_dir)
    with torch.no_grad():
        predicted = [int(model(image[None]).argmax()) for image, _ in data]
    labels = [label for _, label in data]
    assert sorted(set(labels)) == [3, 7]  # the model's indices of c3 and c7, not 0 and 1
    assert top1 == pytest.approx(
        sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
    )

    (tmp_path / "data" / "c3" / "3.png").write_bytes(b"not a png")
    status, _, stderr = run_cli(*argv, str(tmp_path / "data"))
    assert status == 1 and "3.png" in stderr and "--skip-corrupt" in stderr
    assert run_cli(*argv, str(tmp_path / "data"), "--skip-corrupt")[0] == 0

    (tmp_path / "data" / "zebra").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "zebra" / "0.png")
    status, _, stderr = run_cli(*argv, str(tmp_path / "data"))
    assert status == 1 and "not in the model: zebra" in stderr and "[c0, c1, c2" in stderr


def test_evaluate_refuses_data_with_more_classes_than_the_model_has_outputs(tmp_path):
    model_dir = bcos_small_cnn(tmp_path, 2, None)
    argv = ["evaluate", "--model", str(model_dir), "--data", "synthetic", "--num-examples", "4"]
    status, _, stderr = run_cli(*argv, "--image-size", "16")
    assert status == 1 and "the model has 2 outputs" in stderr and "(10 classes)" in stderr


def test_explain_names_an_image_too_small_and_keeps_same_named_images_apart(tmp_path):
    model_dir = bcos_small_cnn(tmp_path, 3, ["a", "b", "c"])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (9, 7), "red").save(images / "small.png")
    Image.new("RGB", (32, 32), "red").save(images / "cat.png")
    Image.new("RGB", (32, 32), "blue").save(images / "cat.jpg")
    argv = ["explain", "--model", str(model_dir), "--image", str(images)]
    status, _, stderr = run_cli(*argv, "--out", str(tmp_path / "native"))
    assert status == 1 and "Traceback" not in stderr
    assert "small.png (9x7 pixels): the model cannot take it" in stderr and "--image-size" in stderr
    written = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert written == [f"cat_{ext}_{kind}.png" for ext in ("jpg", "png")
                       for kind in ("colour", "contributions", "figure")]  # fmt: skip
    status, _, stderr = run_cli(*argv, "--out", str(tmp_path / "resized"), "--image-size", "32")
    assert status == 0, stderr
    assert len(list((tmp_path / "resized").iterdir())) == 9
