"""Model sources, weights files, and saving / loading converted models."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from nets import assert_same_function, keep_signal_alive
from safetensors.torch import save_file
from torch import nn

import bcosify
from bcosify import CheckpointError
from bcosify.cli import main
from bcosify.errors import ModelSourceError, StorageError
from bcosify.models import create, load_weights, source_info


def test_create_records_the_source():
    model = create("torchvision:resnet18", num_classes=3)
    info = source_info(model)
    assert info.name == "torchvision:resnet18" and info.kwargs == {"num_classes": 3}
    assert info.input_mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet18", "unknown model source"),
        ("keras:resnet18", "unknown model source"),
        ("torchvision:resnet_nope", "torchvision has no model 'resnet_nope'"),
    ],
)
def test_bad_source_names(name, message):
    with pytest.raises(ModelSourceError, match=message):
        create(name)


def test_unknown_torchvision_weight_name_lists_the_known_ones():
    # no download happens: the name is checked against the enum first
    with pytest.raises(ModelSourceError, match="IMAGENET1K_V1"):
        create("torchvision:resnet18", weights="IMAGENET_NOPE")


def test_torchvision_weight_names_resolve_without_downloading():
    from torchvision.models import ResNet50_Weights

    from bcosify.models.sources import _torchvision_weights

    assert _torchvision_weights("resnet50", "IMAGENET1K_V2") is ResNet50_Weights.IMAGENET1K_V2
    assert _torchvision_weights("resnet50", "DEFAULT") is ResNet50_Weights.DEFAULT
    full = "ResNet50_Weights.IMAGENET1K_V1"
    assert _torchvision_weights("resnet50", full) is ResNet50_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_files(tmp_path, suffix):
    source = create("torchvision:resnet18", num_classes=4)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:  # wrapped the way training scripts save, with DDP's prefix
        state = {f"module.{k}": v for k, v in source.state_dict().items()}
        torch.save({"state_dict": state}, path)
    model = create("torchvision:resnet18", weights=str(path), num_classes=4)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_mismatched_weights_name_the_keys(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(create("torchvision:resnet18", num_classes=4).state_dict(), str(path))
    with pytest.raises(ModelSourceError, match=r"shape mismatches: fc.bias: \(4,\) vs \(7,\)"):
        create("torchvision:resnet18", weights=str(path), num_classes=7)
    missing = r"missing keys: layer1\.2\.bn1\.bias.*\(96 in all\)"
    with pytest.raises(ModelSourceError, match=missing):
        create("torchvision:resnet34", weights=str(path), num_classes=4)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_files_never_execute_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(ModelSourceError, match="could not read weights"):
        load_weights(nn.Linear(2, 2), path)
    assert "this must never run" not in capsys.readouterr().out
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_weights(nn.Linear(2, 2), tmp_path / "missing.safetensors")


def test_save_load_round_trip(tmp_path):
    model, _ = bcosify.convert(create("torchvision:mobilenet_v3_small", num_classes=5))
    x = torch.rand(2, 3, 48, 48)
    keep_signal_alive(model, x)  # converted, it outputs its logit bias alone
    directory = model.save_pretrained(tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    assert config["source"] == "torchvision:mobilenet_v3_small"
    assert config["options"]["encoding"] == "fold"
    assert_same_function(model, x, bcosify.load(directory))
    assert not list(directory.glob(".*"))  # no temporary files left


def test_save_load_user_model(tmp_path):
    original = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )
    model, _ = bcosify.convert(original, input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    x = torch.rand(1, 3, 16, 16)
    keep_signal_alive(model, x)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="pass its architecture"):
        bcosify.load(tmp_path)
    assert_same_function(model, x, bcosify.load(tmp_path, model=original))


def test_loading_into_the_wrong_architecture_is_a_clear_error(tmp_path):
    model, _ = bcosify.convert(create("torchvision:resnet18", num_classes=5))
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys: .*layer"):
        bcosify.load(tmp_path, model=create("torchvision:resnet34", num_classes=5))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid bcosify config"):
        bcosify.load(tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        bcosify.load(tmp_path / "nowhere")


def test_cli_convert_saves_a_loadable_model(tmp_path, capsys):
    weights = tmp_path / "resnet18.safetensors"
    save_file(create("torchvision:resnet18", num_classes=6).state_dict(), str(weights))
    out = tmp_path / "converted"
    argv = [
        "convert",
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(weights),
        "--num-classes",
        "6",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Conv2d -> BcosConv2d" in printed and "logit_bias.bias" in printed
    assert bcosify.load(out)(torch.rand(1, 3, 32, 32)).shape == (1, 6)
    assert main(["convert", "--model", "nope:x", "--out", str(out)]) == 2
    assert "unknown model source" in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_leaves_what_was_saved(small_disk, capsys):
    convert = ["convert", "--model", "bcosify:small_cnn", "--num-classes", "3", "--out"]
    saved = small_disk.path / "saved"
    assert main([*convert, str(saved)]) == 0
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    capsys.readouterr()
    small_disk.fill()
    # the command line: safetensors' error is no OSError, yet it is one line and exit 1
    out = small_disk.path / "converted"
    assert main([*convert, str(out)]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error, error
    assert "No space left on device" in error and "nothing was written" in error
    assert not out.exists() or not list(out.iterdir())
    # save_pretrained over a saved model: a StorageError, and the saved files as they were
    model = bcosify.load(saved)
    with pytest.raises(StorageError, match=r"No space left on device.*previous version is intact"):
        model.save_pretrained(saved)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # no temporaries either
    small_disk.empty()
    assert model.save_pretrained(saved) == saved


def test_an_ordinary_model_without_a_source_loads_into_its_architecture(tmp_path):
    from bcosify.models import load_model, save_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    save_model(net, tmp_path / "net")
    with pytest.raises(CheckpointError, match=r"without a source.*model=MyNet"):
        load_model(tmp_path / "net")
    loaded = load_model(tmp_path / "net", model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))
    x = torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(loaded(x), net(x))
