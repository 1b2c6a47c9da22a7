"""The training engine: exact resumption, crash-safe checkpoints, DDP, learning, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from bcosify import BcosModel, CheckpointError
from bcosify.data import SyntheticShapes
from bcosify.models import IMAGENET_STD, create
from bcosify.train import RecipeError, get_recipe, load_checkpoint, save_checkpoint, train


def small_data(n: int = 64, size: int = 32, augment: bool = True) -> SyntheticShapes:
    transform = (
        v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
        if augment
        else None
    )
    return SyntheticShapes(n, size, seed=0, transform=transform)


def bcos_recipe(**overrides):
    settings = dict(
        epochs=2,
        batch_size=16,
        image_size=32,
        lr=1e-3,
        agc_clip=0.01,
        ema_decay=0.9,
        checkpoint_every=100,
    )
    return get_recipe("bcosify-cnn", **{**settings, **overrides})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_gives_identical_weights(tmp_path):
    data, recipe = small_data(), bcos_recipe()  # 4 steps per epoch: the resume crosses epochs

    def model():  # the same initial weights every time
        torch.manual_seed(0)
        return create("torchvision:resnet18", num_classes=10)

    straight = train(model(), data, recipe, tmp_path / "a", max_steps=6, progress=False)
    first = train(model(), data, recipe, tmp_path / "b", max_steps=3, progress=False)
    assert first.step == 3 and not first.finished
    resumed = train(model(), data, recipe, tmp_path / "b", max_steps=6, progress=False)
    assert resumed.step == 6
    a, b = weights(straight.model), weights(resumed.model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert isinstance(resumed.model, BcosModel)


def test_resuming_another_architecture_is_a_clear_error(tmp_path):
    data, recipe = small_data(32, augment=False), bcos_recipe(epochs=1)
    train(
        create("torchvision:resnet18", num_classes=10),
        data,
        recipe,
        tmp_path,
        max_steps=1,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="missing keys"):
        train(
            create("torchvision:resnet34", num_classes=10), data, recipe, tmp_path, progress=False
        )
    with pytest.raises(CheckpointError, match="different recipe"):
        train(
            create("torchvision:resnet18", num_classes=10),
            data,
            bcos_recipe(lr=0.5),
            tmp_path,
            progress=False,
        )


WRITER = textwrap.dedent("""
    import sys, torch
    from bcosify.train import save_checkpoint
    step = 0
    while True:
        save_checkpoint(sys.argv[1], {"step": step, "big": torch.full((4_000_000,), float(step))})
        print(step, flush=True)
        step += 1
""")


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):  # a few complete checkpoints, then kill during the next write
            assert process.stdout.readline().strip()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = load_checkpoint(tmp_path)
    assert state["step"] >= 2
    assert torch.equal(state["big"], torch.full((4_000_000,), float(state["step"])))


def test_checkpoint_round_trip_keeps_types():
    state = {
        "step": 7,
        "pairs": (1, 2.5),
        "optimizer": {"state": {0: {"m": torch.ones(3)}}, "groups": [{"betas": (0.9, 0.99)}]},
        "none": None,
    }
    import tempfile

    directory = tempfile.mkdtemp()
    save_checkpoint(directory, state)
    loaded = load_checkpoint(directory)
    assert loaded["pairs"] == (1, 2.5) and loaded["none"] is None
    assert torch.equal(loaded["optimizer"]["state"][0]["m"], torch.ones(3))
    assert loaded["optimizer"]["groups"][0]["betas"] == (0.9, 0.99)
    assert set(load_file(os.path.join(directory, "checkpoint.safetensors"))) == {
        ".optimizer.state.0.m"
    }


class NoBatchStatistics(nn.Module):
    """A CNN without batch norm, so that splitting a batch over processes changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32)
    result = train(NoBatchStatistics(), small_data(32), recipe, out, device="cpu", progress=False)
    torch.save(weights(result.model), os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_matches_a_single_process_on_the_same_global_batch(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])

    torch.manual_seed(0)
    recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32)
    single = train(NoBatchStatistics(), small_data(32), recipe, tmp_path / "one", progress=False)
    for key, value in weights(single.model).items():
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-5)


def small_cnn(num_classes: int) -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def test_standard_recipe_learns_and_a_bcos_model_trains(tmp_path):
    classes = ("circle", "cross", "triangle")
    train_data = SyntheticShapes(960, 48, seed=0, split="train", classes=classes)
    val_data = SyntheticShapes(300, 48, seed=0, split="val", classes=classes)
    recipe = get_recipe("standard", epochs=3, batch_size=32, image_size=48, weight_decay=0.0)
    torch.manual_seed(0)
    result = train(
        small_cnn(3), train_data, recipe, tmp_path / "standard", val_data=val_data, progress=False
    )
    records = [json.loads(line) for line in (tmp_path / "standard" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_top1"] > 0.4  # chance is 1/3

    bcos = train(
        result.model,
        train_data,
        bcos_recipe(epochs=1, batch_size=32),
        tmp_path / "b",
        progress=False,
    )
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert isinstance(bcos.model, BcosModel) and bcos.finished
    assert all(r["b"] == 2.0 and math.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "b" / "model" / "model.safetensors").is_file()


def test_bad_recipes_are_clear_errors(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'fast'; available: standard"):
        get_recipe("fast")
    with pytest.raises(RecipeError, match="unknown recipe fields"):
        get_recipe("standard", learning_rate=1.0)
    with pytest.raises(RecipeError, match="fewer than one batch"):
        train(
            create("torchvision:resnet18", num_classes=10),
            small_data(8),
            get_recipe("standard", batch_size=16),
            tmp_path,
            progress=False,
        )
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        train(
            create("torchvision:resnet18", num_classes=10),
            small_data(16),
            get_recipe("standard", batch_size=8, precision="fp16"),
            tmp_path,
            device="cpu",
            progress=False,
        )
    with pytest.raises(RecipeError, match=r"needs a teacher.*bcosify.train.distill"):
        train(
            create("torchvision:resnet18", num_classes=10),
            small_data(16),
            get_recipe("bcosify-clip", batch_size=8),
            tmp_path,
            progress=False,
        )


def test_sigterm_checkpoints_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "bcosify",
        "train",
        "--model",
        "torchvision:resnet18",
        "--data",
        "synthetic",
        "--recipe",
        "standard",
        "--out",
        str(out),
        "--epochs",
        "50",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--num-train",
        "64",
        "--num-val",
        "8",
        "--set",
        "checkpoint_every=100000",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0, stdout
    assert "stopped" in stdout
    step = load_checkpoint(out)["step"]
    assert 8 <= step < 400  # stopped early, at or after the first epoch (8 steps)
    resumed = subprocess.run(
        [*command[:-3], "--max-steps", str(step + 2), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(out)["step"] == step + 2


def test_prepared_models_follow_the_recipe():
    from bcosify.train.prepare import prepare_model

    torch.manual_seed(0)
    original = small_cnn(3)
    relus = sum(isinstance(m, nn.ReLU) for m in original.modules())
    bcosified = prepare_model(original, get_recipe("bcosify-cnn"))
    scratch = prepare_model(original, get_recipe("bcos-scratch"))
    assert scratch.config.options.activations == "identity"  # the B-cos v2 design
    assert sum(isinstance(m, nn.ReLU) for m in bcosified.modules()) == relus > 0
    assert not any(isinstance(m, nn.ReLU) for m in scratch.modules())
    first_conv = next(m for m in original.modules() if isinstance(m, nn.Conv2d))
    kept = bcosified.state_dict()["network.0.weight"]
    assert kept.shape[1] == 6 and kept.shape[0] == first_conv.out_channels
    # B-cosified keeps the weights, folded into the [x, 1 - x] input (fold: W6 = [W (1 - m) / s,
    # -W m / s], so the difference of the halves is W / s); from scratch does not
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(kept[:, :3] - kept[:, 3:], first_conv.weight / std)
    assert not torch.allclose(scratch.state_dict()["network.0.weight"], kept)
