"""The training engine: exact resumption, crash-safe checkpoints, DDP, learning, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from bcosify import BcosModel, CheckpointError
from bcosify.data import SyntheticShapes
from bcosify.errors import DivergenceError
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


def test_compiled_training_equals_eager_training_and_compiles_after_the_ramp(tmp_path, monkeypatch):
    import bcosify.train.loop as loop

    data = small_data(32, augment=False)
    recipe = bcos_recipe(epochs=1, batch_size=8, b_ramp_steps=2)  # B 1, 1.5, then 2 at step 2
    compiled_at = []  # the B of the layers whenever the model is compiled
    spy = loop.compile_model

    def recording(model, **options):
        compiled_at.append({m.b for m in model.modules() if hasattr(m, "b")})
        return spy(model, **options)

    monkeypatch.setattr(loop, "compile_model", recording)

    def model():
        torch.manual_seed(0)
        return create("bcosify:small_cnn", num_classes=10)

    eager = train(model(), data, recipe, tmp_path / "a", progress=False)
    compiled = train(
        model(), data, recipe, tmp_path / "b", progress=False,
        compile_options={"backend": "aot_eager"},
    )  # fmt: skip
    # once, when the ramp is over: every B on the ramp would have compiled another graph
    assert compiled_at == [{2.0}]
    a, b = weights(eager.model), weights(compiled.model)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)


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
        save_checkpoint(sys.argv[1], {"step": step, "big": torch.full((16_000_000,), float(step))})
        print(step, flush=True)
        step += 1
""")


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_and_a_run_clears_the_rest(
    tmp_path,
):
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):  # a few complete checkpoints, then kill during the next write
            assert process.stdout.readline().strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if leftovers(tmp_path):  # mid-write: stop it, and kill it if it is still mid-write
                process.send_signal(signal.SIGSTOP)
                if leftovers(tmp_path):
                    break
                process.send_signal(signal.SIGCONT)  # the write finished in between
            # no sleep: a 64 MB write can take less than a few milliseconds on a fast disk
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = load_checkpoint(tmp_path)
    assert state["step"] >= 2
    assert torch.equal(state["big"], torch.full((16_000_000,), float(state["step"])))
    assert leftovers(tmp_path)  # what the kill left behind, of the checkpoint's full size
    (tmp_path / "checkpoint.safetensors").unlink()  # not a training checkpoint
    recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32)
    train(NoBatchStatistics(), small_data(8), recipe, tmp_path, progress=False)
    assert not leftovers(tmp_path)


def leftovers(folder) -> list[str]:
    """Files in ``folder`` that no one will read: what killed writers leave."""
    kept = {"checkpoint.safetensors", "metrics.jsonl", "recipe.json", ".lock", "model"}
    return sorted(p.name for p in folder.iterdir() if p.name not in kept)


def test_an_examples_draw_seeds_only_the_cpu_generator_and_puts_it_back(monkeypatch):
    from bcosify.train.loading import SeededExamples, mix_seed

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.rand(3)

    def touched(seed):
        raise AssertionError("an accelerator's generator was reseeded")

    torch.manual_seed(0)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", touched)
    data = SeededExamples(Noise(), seed=5)
    data.epoch = 2
    before = torch.random.get_rng_state()
    drawn = data[3]
    assert torch.equal(torch.random.get_rng_state(), before)
    # the draw is the one a fresh generator seeded from (seed, epoch, index) makes
    expected = torch.rand(3, generator=torch.Generator().manual_seed(mix_seed(5, 2, 3)))
    assert torch.equal(drawn, expected)


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


@pytest.mark.slow  # 26 s; the recipes' training loop runs in the default suite's other tests
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


def test_an_interrupted_run_exits_128_plus_the_signal_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    once = ["--set", "checkpoint_every=100000"]  # checkpoints at epoch ends and on the signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        process = start_training(out, *once)
        process.send_signal(sig)
        stdout, _ = process.communicate(timeout=120)
        assert process.returncode == 128 + sig, stdout  # 143, then 130
        assert "stopped (resume by running the same command)" in stdout
    step = load_checkpoint(out)["step"]
    assert 8 <= step < 2000  # two runs, each stopped at or after an epoch's end (4 steps)
    resumed = ["--out", str(out), "--epochs", "500", *once, "--max-steps", str(step + 2)]
    status, stdout, _ = cli(*TINY_RUN, *resumed)
    assert (
        status == 0 and f"stopped (resume by running the same command) after {step + 2}" in stdout
    )
    assert load_checkpoint(out)["step"] == step + 2
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "val_loss" in r]
    assert steps == sorted(set(steps)) == list(range(4, step + 3, 4))  # each epoch once


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


def test_the_recipes_maxpool_converts_max_pooling_and_the_saved_model_keeps_it(tmp_path):
    from bcosify import load
    from bcosify.train.prepare import prepare_model

    def pools(model: nn.Module) -> list[type]:
        return [type(m) for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]

    torch.manual_seed(0)
    original = create("bcosify:small_cnn", num_classes=3, widths=[4, 4])
    assert pools(prepare_model(original, get_recipe("bcosify-cnn"))) == [nn.MaxPool2d]
    averaged = prepare_model(original, get_recipe("bcosify-cnn", maxpool="avg"))
    assert pools(averaged) == [nn.AvgPool2d]
    averaged.save_pretrained(tmp_path / "model")
    loaded = load(tmp_path / "model").eval()
    assert pools(loaded) == [nn.AvgPool2d]
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(loaded(images), averaged.eval()(images))
    with pytest.raises(RecipeError, match="maxpool must be one of"):
        get_recipe("bcosify-cnn", maxpool="mean")


# --- a run never ends "finished" on a broken state ---------------------------------------------

TINY_RUN = [
    "train",
    "--model",
    "bcosify:small_cnn",
    "--data",
    "synthetic",
    "--recipe",
    "standard",
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--num-train",
    "32",
    "--num-val",
    "8",
    "--no-progress",
]


def cli(*argv: str) -> tuple[int, str, str]:
    """``bcosify <argv>`` in this process: the exit status, stdout and stderr."""
    import contextlib
    import io

    from bcosify.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def all_finite(state) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_diverged_run_saves_nothing_non_finite_and_resumes_with_a_lower_lr(tmp_path):
    out = str(tmp_path / "run")
    run = [*TINY_RUN, "--out", out, "--epochs", "2", "--set", "checkpoint_every=2"]
    assert cli(*run, "--max-steps", "2")[0] == 0  # a finite checkpoint at step 2
    status, stdout, stderr = cli(*run, "--lr", "1e30")
    assert status == 1 and "finished" not in stdout
    assert len(stderr.strip().splitlines()) == 1 and "diverged" in stderr
    assert "holds step 2" in stderr and "--lr" in stderr
    state = load_checkpoint(out)
    assert state["step"] == 2 and all_finite(state["model"])  # the last finite checkpoint
    # the model written when --max-steps stopped the first run, untouched by the diverged one
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all_finite(saved)
    weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
    assert saved.keys() <= weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in saved.items())
    again = cli(*run, "--lr", "1e30")  # the same command again does not "finish" either
    assert again[0] == 1 and "finished" not in again[1]
    assert load_checkpoint(out)["step"] == 2
    status, stdout, stderr = cli(*run, "--lr", "1e-4")  # the advice works: a lower lr resumes
    assert status == 0 and "finished after 8 steps" in stdout, stderr
    assert all_finite(load_file(str(tmp_path / "run" / "model" / "model.safetensors")))
    changes = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"step": 2, "recipe_changes": {"lr": [0.001, 0.0001]}} in changes


class PoisonedStatistics(nn.Module):
    """A finite loss, but a running statistic that turns NaN at the third training step (as an
    overflowing batch-norm variance does)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = NoBatchStatistics()
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("running", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls >= 3:
                self.running.fill_(float("nan"))
        return self.net(x)


def test_non_finite_weights_are_never_checkpointed_even_with_a_finite_loss(tmp_path):
    recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32, checkpoint_every=2)
    with pytest.raises(DivergenceError, match=r"at step 4: 1 tensors hold NaN.*model\.running"):
        train(PoisonedStatistics(), small_data(32), recipe, tmp_path, progress=False)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2 and all_finite(state["model"])


def start_training(out, *extra: str) -> subprocess.Popen:
    """A long ``bcosify train`` in another process, returned once it has logged an epoch."""
    command = [sys.executable, "-m", "bcosify", *TINY_RUN, "--out", str(out), "--epochs", "500"]
    metrics = out / "metrics.jsonl"

    def logged() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    before = logged()
    process = subprocess.Popen([*command, *extra], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while logged() <= before and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    return process


def test_one_run_per_folder_and_a_dead_owner_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    first = start_training(out)
    try:
        status, _, stderr = cli(*TINY_RUN, "--out", str(out), "--max-steps", "1")
        assert status == 1 and f"pid {first.pid}" in stderr and "in use" in stderr
        assert first.poll() is None  # the first run goes on undisturbed
        # an epoch's metrics are logged before its checkpoint is written: wait for that too
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)  # the owner dies without releasing anything
        first.wait()
    step = load_checkpoint(out)["step"]
    resumed = ["--out", str(out), "--epochs", "500", "--max-steps", str(step + 1)]
    status, stdout, stderr = cli(*TINY_RUN, *resumed)
    assert status == 0 and f"after {step + 1} steps" in stdout, stderr


def test_resuming_with_other_data_is_refused(tmp_path):
    out = str(tmp_path / "run")
    assert cli(*TINY_RUN, "--out", out, "--max-steps", "1")[0] == 0
    status, _, stderr = cli(*TINY_RUN[:-5], "--num-train", "40", *TINY_RUN[-3:], "--out", out)
    assert status == 1 and "other data" in stderr and "train_examples 32 -> 40" in stderr
    assert load_checkpoint(out)["step"] == 1


def test_seed_decides_the_initial_weights_of_a_model_built_from_a_source(tmp_path):
    def first_checkpoint(name: str, seed: str) -> dict[str, torch.Tensor]:
        assert (
            cli(*TINY_RUN, "--out", str(tmp_path / name), "--max-steps", "1", "--seed", seed)[0]
            == 0
        )
        return load_checkpoint(tmp_path / name)["model"]

    a, b, c = first_checkpoint("a", "3"), first_checkpoint("b", "3"), first_checkpoint("c", "4")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def strict_json(line: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_resumed_metrics_hold_every_step_once_as_strict_json(tmp_path):
    out = tmp_path / "run"
    recipe = get_recipe("standard", epochs=2, batch_size=8, image_size=32, augment="none")
    train(
        NoBatchStatistics(), small_data(32), recipe, out, max_steps=3, log_every=1, progress=False
    )
    with (out / "metrics.jsonl").open("a") as log:  # what a kill after step 5's record leaves
        log.write('{"step": 4, "loss": NaN}\n{"step": 5, "loss": Infinity}\n{"step": 6, "lo')
    train(NoBatchStatistics(), small_data(32), recipe, out, log_every=1, progress=False)
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 9))
    diverged = tmp_path / "diverged"
    with pytest.raises(DivergenceError):
        train(NoBatchStatistics(), small_data(32), replace_lr(recipe, 1e30), diverged,
              log_every=1, progress=False)  # fmt: skip
    records = [strict_json(line) for line in (diverged / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] is None  # the non-finite loss, as null


def replace_lr(recipe, lr):
    from dataclasses import replace

    return replace(recipe, lr=lr)


def test_saved_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32)
        train(NoBatchStatistics(), small_data(16), recipe, tmp_path, progress=False)
    finally:
        os.umask(previous)
    for name in ("checkpoint.safetensors", "model/model.safetensors", "model/config.json"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == 0o644, (name, oct(mode))


def test_a_full_disk_is_one_line_and_loses_nothing(small_disk):
    out = small_disk.path / "run"
    assert cli(*TINY_RUN, "--out", str(out), "--max-steps", "1")[0] == 0
    checkpoint = out / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    # room for a step's log lines, not for a checkpoint: safetensors' own error, not an OSError
    small_disk.fill(leave=len(before) // 2)
    status, _, stderr = cli(*TINY_RUN, "--out", str(out), "--max-steps", "2")
    assert status == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert "No space left on device" in stderr and "checkpoint.safetensors" in stderr
    assert "intact" in stderr and "Traceback" not in stderr
    assert checkpoint.read_bytes() == before
    temporaries = [p.name for p in out.rglob(".*") if ".tmp" in p.name]  # ours and safetensors'
    assert not temporaries
    # space again: the same command goes on from the intact checkpoint
    small_disk.empty()
    assert cli(*TINY_RUN, "--out", str(out), "--max-steps", "2")[0] == 0
    assert load_checkpoint(out)["step"] == 2


def test_classes_must_agree_between_the_splits_and_with_the_model(tmp_path):
    from bcosify.errors import DataError

    shapes = ("circle", "cross", "triangle")
    recipe = get_recipe("standard", epochs=1, batch_size=8, image_size=32)

    def data(classes, n=16):
        return SyntheticShapes(n, 32, seed=0, classes=classes)

    with pytest.raises(
        DataError, match=r"validation data.*\[circle, cross, triangle\].*\[circle, cross\]"
    ):
        train(small_cnn(3), data(shapes), recipe, tmp_path / "a", val_data=data(shapes[:2], 8))
    one_class = torch.utils.data.TensorDataset(torch.rand(16, 3, 32, 32), torch.zeros(16).long())
    one_class.classes = ["circle"]
    with pytest.raises(DataError, match="at least two"):
        train(small_cnn(3), one_class, recipe, tmp_path / "b", progress=False)
    with pytest.raises(DataError, match="the model has 10 outputs but the data has"):
        train(small_cnn(10), data(shapes), recipe, tmp_path / "c", progress=False)
    first = train(small_cnn(3), data(shapes), recipe, tmp_path / "d", progress=False)
    saved = json.loads((tmp_path / "d" / "model" / "config.json").read_text())
    assert saved["class_names"] == list(shapes)  # saved with the model...
    from bcosify.models import load_model

    model = load_model(tmp_path / "d" / "model", model=small_cnn(3))
    others = ("circle", "square", "star")
    with pytest.raises(DataError, match=r"not in the model: square, star"):  # ...and checked
        train(model, data(others), recipe, tmp_path / "e", progress=False)
    assert first.finished


def test_gradients_the_model_brings_do_not_enter_the_first_step(tmp_path):
    # the loop zeroes gradients after each step; a model handed over with .grad set (the
    # user's own backward, a calibration's) must still take the same steps as a clean one
    data = small_data()
    recipe = get_recipe("standard", epochs=1, batch_size=16, image_size=32, optimizer="sgd")
    results = []
    for dirty in (False, True):
        torch.manual_seed(0)
        model = create("torchvision:resnet18", num_classes=10)
        if dirty:
            for p in model.parameters():
                p.grad = torch.full_like(p, 100.0)
        results.append(
            train(model, data, recipe, tmp_path / f"{dirty}", max_steps=2, progress=False)
        )
    a, b = (weights(r.model) for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
