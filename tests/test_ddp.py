"""Training under DDP (gloo on CPU): N processes compute what one process computes on the same
global batch, batch norm included, and a signal to any process stops all of them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from test_train import TINY_RUN, cli, small_data, weights
from torch import nn

from bcosify.nn import BcosBatchNorm2d
from bcosify.train import get_recipe, load_checkpoint, train
from bcosify.train.distributed import Distributed
from bcosify.train.sync_norm import synchronised_batch_norms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_norm_cnn() -> nn.Module:
    """Convolutions without bias before batch norm (as in ResNets), pooling, a linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


RECIPES = {
    # an ordinary model: nn.BatchNorm2d
    "standard": dict(epochs=1, batch_size=8, image_size=32),
    # B-cosified: BcosBatchNorm2d (uncentred), with clipping and an EMA
    "bcosify-cnn": dict(epochs=1, batch_size=8, image_size=32, lr=1e-3, ema_decay=0.9),
}


def _run_all(out: str, device: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    results = {}
    for name, settings in RECIPES.items():
        recipe = get_recipe(name, **settings)
        result = train(
            batch_norm_cnn(), small_data(32), recipe, os.path.join(out, name), progress=False
        )
        results[name] = weights(result.model)
    return results


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    results = _run_all(out)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_processes_train_what_one_does_batch_norm_included(tmp_path):
    ddp = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(ddp)), nprocs=2, join=True)
    ranks = [torch.load(ddp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = _run_all(str(tmp_path / "one"))
    for name in RECIPES:
        assert all(torch.equal(ranks[0][name][k], ranks[1][name][k]) for k in ranks[0][name])
        # every tensor: weights and the running statistics of batch norm
        assert any("running_var" in k for k in single[name])
        for key, value in single[name].items():
            torch.testing.assert_close(ranks[0][name][key], value, rtol=0, atol=1e-5, msg=key)


def test_batch_norms_keep_their_class_and_keys_around_a_synchronised_run():
    model = nn.Sequential(nn.BatchNorm2d(3), BcosBatchNorm2d(3))
    keys = list(model.state_dict())
    with synchronised_batch_norms(model, Distributed(world=2)):
        assert [type(m).__name__ for m in model] == [
            "_SynchronisedBatchNorm2d",
            "_SynchronisedBcosBatchNorm2d",
        ]
        assert list(model.state_dict()) == keys
    assert [type(m) for m in model] == [nn.BatchNorm2d, BcosBatchNorm2d]


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(tmp_path):
    out = tmp_path / "run"
    port = free_port()
    command = [sys.executable, "-m", "bcosify", *TINY_RUN, "--out", str(out), "--epochs", "500"]
    processes = []
    for rank in (0, 1):  # what torchrun --nproc_per_node=2 starts
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        processes.append(
            subprocess.Popen(
                [*command, "--device", "cpu"], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes)
            time.sleep(0.2)
        processes[1].send_signal(signal.SIGTERM)  # one rank only
        outputs = [p.communicate(timeout=120)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [128 + signal.SIGTERM] * 2, outputs
    step = load_checkpoint(out)["step"]
    assert all(
        f"stopped (resume by running the same command) after {step} steps" in output
        for output in outputs
    ), outputs
    status, stdout, _ = cli(
        *TINY_RUN, "--out", str(out), "--epochs", "500", "--max-steps", str(step + 1)
    )
    assert status == 0 and f"after {step + 1} steps" in stdout


def test_a_batch_statistics_layer_that_cannot_be_synchronised_is_named():
    class BatchNormAct(nn.BatchNorm2d):  # like timm's: its own forward
        def forward(self, x):
            return super().forward(x).relu()

    model = nn.Sequential(nn.Conv2d(3, 3, 1), BatchNormAct(3))
    warned = pytest.warns(UserWarning, match=r"1 \(BatchNormAct\) are not synchronised")
    with warned, synchronised_batch_norms(model, Distributed(world=2)):
        assert type(model[1]) is BatchNormAct
