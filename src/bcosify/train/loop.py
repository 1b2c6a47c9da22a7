"""The training loop: one function, on one process or many (``torchrun``), resumable.

Reproducibility is by construction: the data order and every example's augmentation are
functions of ``(seed, epoch, index)`` (see :mod:`bcosify.train.loading`), and the global random
state is re-seeded from ``(seed, step, rank)`` before every step. A run stopped after step ``k``
and resumed from its checkpoint therefore computes exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..convert import BcosModel, BcosTextModel
from ..data.classes import check_classes, format_classes
from ..device import device_of
from ..errors import DataError, DivergenceError
from ..liveness import warn_if_constant
from ..models.sources import class_names_of
from ..models.text import TextClassifier
from ..nn import BcosBatchNorm2d
from ..nn.compile import compile as compile_model
from ..serialization import atomic_write, non_finite_entries
from .budget import TimeBudget
from .checkpoint import CHECKPOINT_FILE, save_checkpoint
from .distributed import Distributed, setup_distributed
from .loading import SeededExamples, build_loader, mix_seed
from .losses import classification_loss
from .optim import (
    ExponentialMovingAverage,
    adaptive_clip_grad_,
    b_at,
    build_optimizer,
    learning_rate_at,
    set_b_,
)
from .prepare import prepare_model, trained_network
from .recipes import DISTILLATION_LOSSES, Recipe, RecipeError
from .resume import RESUMABLE_CHANGES, data_fingerprint, resume_from_checkpoint
from .run_folder import METRICS_FILE, MetricsLog, hold_run_folder
from .sync_norm import synchronised_batch_norms
from .validation import validate

__all__ = ["METRICS_FILE", "MODEL_DIR", "Objective", "TrainResult", "train"]

MODEL_DIR = "model"
RECIPE_FILE = "recipe.json"


class Objective(Protocol):
    """A training loss other than the recipe's classification loss (e.g. distillation).

    ``objective(outputs, images, labels)`` is the loss of a batch, from the model's outputs and
    the batch itself; ``objective.validate(model, data, batch_size=..., dist=...)`` returns the
    validation metrics (keys starting with ``val_``). An objective that is an ``nn.Module`` (one
    holding a teacher, say) is moved to the training device.
    """

    def __call__(
        self, outputs: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """The loss of a batch: a scalar tensor."""

    def validate(
        self, model: nn.Module, data: Dataset, *, batch_size: int, dist: Distributed
    ) -> dict[str, Any]:
        """Validation metrics of ``model`` on ``data``, reduced over the processes."""

    def progress(self, fraction: float) -> None:
        """Told before every step how far the run is (0 to 1: of its steps, or of its time
        budget), for objectives with a schedule of their own."""


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        model: the trained model (the B-cos model, or the ordinary model), on its device,
            with the EMA weights when the recipe keeps an EMA.
        step: optimizer steps done in all (including those before a resumption).
        finished: False when the run stopped early (``max_steps``, or SIGINT/SIGTERM).
        history: the per-epoch validation metrics.
        run_dir: where the checkpoint, metrics log and final model are.
        signal: the signal (``signal.SIGINT`` or ``signal.SIGTERM``) that stopped the run
            early, on this process or any other of a DDP run; None when none did.
    """

    model: nn.Module
    step: int
    finished: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    signal: int | None = None


def train(
    model: nn.Module,
    train_data: Dataset,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    val_data: Dataset | None = None,
    resume: bool = True,
    max_steps: int | None = None,
    device: str | None = None,
    log_every: int = 10,
    progress: bool = True,
    tensorboard: bool = False,
    objective: Objective | None = None,
    compile_options: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` with ``recipe``; resumable, and DDP under ``torchrun``.

    Writes to ``out_dir``: ``recipe.json``, ``checkpoint.safetensors`` (every
    ``recipe.checkpoint_every`` steps, at each epoch end, at the end and on SIGINT/SIGTERM),
    ``metrics.jsonl`` (a JSON line per logged step and per epoch) and, however the run ends
    (finished, ``max_steps``, ``recipe.time_budget``, SIGINT/SIGTERM), the trained model in
    ``model/`` (load it with :func:`bcosify.load` or :func:`bcosify.models.load`); a run with an
    ``objective`` or a time budget that stops between epochs validates once more first.
    Only rank 0 writes. An existing checkpoint in ``out_dir`` is resumed from (``resume``);
    ``lr``, ``warmup_steps``, ``schedule`` and ``agc_clip`` may differ from the checkpoint's
    recipe, every other field must not, and the data must be the same (its size, classes and
    seed are recorded). One run at a time holds ``out_dir`` (a second one raises
    :class:`~bcosify.errors.RunFolderBusyError`).

    Nothing non-finite is ever saved: a non-finite loss, or non-finite weights when a
    checkpoint is due, raise a :class:`~bcosify.errors.DivergenceError` and leave the last
    finite checkpoint in place, from which a run with a lower ``lr`` resumes.

    Under DDP every batch norm layer trains with the statistics of the global batch (see
    :mod:`bcosify.train.sync_norm`), and a SIGINT or SIGTERM to any process stops them all at
    the same step.

    Args:
        model: an ordinary model (for the ``standard`` recipe, or to be B-cosified) or a
            :class:`bcosify.BcosModel`.
        train_data, val_data: datasets of ``(image, label[, ...])`` with images in ``[0, 1]``.
            When they have ``classes`` (the image folders and synthetic shapes do) the lists
            must agree with each other and with the model's class names, if it has any.
        max_steps: stop (with a checkpoint) after this many steps in all.
        objective: the loss to train with instead of the recipe's classification loss (see
            :class:`Objective`; :mod:`bcosify.train.distill` distils a CLIP image tower with
            it). Accuracy is then neither computed nor logged.
        compile_options: compile the model with :func:`bcosify.compile` and these options
            (``{}`` for torch.compile's defaults; None trains eagerly). The first step, the
            first validation and any new batch shape compile, which takes from seconds to
            minutes on a CPU; while ``b_ramp_steps`` ramps B the model stays eager, because
            every new B would compile another graph.

    Example:
        >>> import tempfile, torch
        >>> from bcosify.models import create
        >>> from bcosify.train import get_recipe
        >>> data = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.arange(8) % 2)
        >>> recipe = get_recipe("standard", epochs=1, batch_size=4, augment="none")
        >>> result = train(create("torchvision:resnet18", num_classes=2), data, recipe,
        ...                tempfile.mkdtemp(), progress=False)
        >>> result.step, result.finished
        (2, True)
    """
    if objective is None and recipe.loss in DISTILLATION_LOSSES:
        raise RecipeError(
            f"recipe {recipe.name!r} distils with the {recipe.loss!r} loss, which needs a teacher: "
            "run it with bcosify.train.distill(clip_model, data, out_dir, recipe=recipe)"
        )
    if max_steps is not None and max_steps < 1:
        raise RecipeError(f"max_steps must be at least 1, got {max_steps}")
    classes = _check_data_classes(model, train_data, val_data) if objective is None else None
    dist = setup_distributed(device)
    plan = _plan(recipe, train_data, dist, max_steps)
    torch.manual_seed(mix_seed(recipe.seed, -1, dist.rank))
    prepared = prepare_model(model, recipe).to(dist.device)
    if classes is not None:
        _check_outputs(prepared, train_data, classes)
    if isinstance(objective, nn.Module):
        objective.to(dist.device)
    with contextlib.ExitStack() as stack:
        run = _Run(prepared, recipe, Path(out_dir), dist, plan, train_data, val_data, objective)
        run.open(stack, resume, tensorboard, progress)
        run.loop(log_every, compile_options)
        return run.finish(classes)


@dataclass(frozen=True)
class _Plan:
    """The shape of a run: examples per process and step, steps per epoch and in all, and the
    step to stop after (``max_steps``, or the last)."""

    per_process: int
    steps_per_epoch: int
    total_steps: int
    stop_after: int


def _plan(recipe: Recipe, data: Dataset, dist: Distributed, max_steps: int | None) -> _Plan:
    """The run's plan, or a :class:`RecipeError` for a batch the processes cannot share, an
    epoch shorter than a batch, or fp16 without a GPU."""
    if recipe.batch_size % (dist.world * recipe.grad_accumulation) != 0:
        raise RecipeError(
            f"batch_size {recipe.batch_size} must be divisible by the number of processes "
            f"({dist.world}) times grad_accumulation ({recipe.grad_accumulation})"
        )
    epoch_size = recipe.epoch_size or len(data)  # type: ignore[arg-type]
    steps_per_epoch = epoch_size // recipe.batch_size
    if steps_per_epoch == 0:
        raise RecipeError(
            f"an epoch has {epoch_size} examples, fewer than one batch of "
            f"{recipe.batch_size}: lower batch_size (or raise epoch_size)"
        )
    if recipe.precision == "fp16" and dist.device.type != "cuda":
        raise RecipeError("fp16 needs a GPU; use precision='bf16' on a CPU")
    total_steps = recipe.epochs * steps_per_epoch
    return _Plan(
        recipe.batch_size // dist.world,
        steps_per_epoch,
        total_steps,
        total_steps if max_steps is None else min(max_steps, total_steps),
    )


class _Run:
    """One training run in progress, in named phases: :meth:`open` the run folder (lock,
    resumption, recipe, log), :meth:`loop` over the steps (checkpoints and validation as they
    fall due), :meth:`finish` (the EMA weights, the liveness check, ``model/``)."""

    def __init__(
        self,
        prepared: nn.Module,
        recipe: Recipe,
        out: Path,
        dist: Distributed,
        plan: _Plan,
        train_data: Dataset,
        val_data: Dataset | None,
        objective: Objective | None,
    ) -> None:
        self.prepared, self.recipe, self.out, self.dist, self.plan = (
            prepared,
            recipe,
            out,
            dist,
            plan,
        )
        self.train_data, self.val_data, self.objective = train_data, val_data, objective
        self.optimizer = build_optimizer(recipe, prepared.parameters())
        # a step adds its gradients to what the parameters hold: whatever the model brings
        # (the user's own backward, a calibration) is not this run's
        self.optimizer.zero_grad(set_to_none=True)
        self.ema = (
            ExponentialMovingAverage(prepared, recipe.ema_decay) if recipe.ema_decay else None
        )
        self.scaler = torch.amp.GradScaler("cuda") if recipe.precision == "fp16" else None
        self.fingerprint = data_fingerprint(train_data, val_data)
        self.is_bcos = isinstance(prepared, (BcosModel, BcosTextModel))
        self.step = 0
        self.saved_step: int | None = None  # the step of the checkpoint on disk, if any
        self.history: list[dict[str, Any]] = []
        self.stopped_by: int | None = None
        self.budget_spent = False
        self.input_size: tuple[int, int] | None = None  # of the images trained on

    def open(
        self, stack: contextlib.ExitStack, resume: bool, tensorboard: bool, progress: bool
    ) -> None:
        """Hold the run folder, resume from its checkpoint, write the recipe, open the log."""
        recipe, dist, out = self.recipe, self.dist, self.out
        stack.enter_context(hold_run_folder(out, dist))
        self.step, changes, spent = (
            resume_from_checkpoint(
                out, recipe, self.fingerprint, self.prepared, self.optimizer, self.ema, self.scaler
            )
            if resume
            else (0, {}, 0.0)
        )
        self.clock = TimeBudget(recipe.time_budget, spent)
        self.saved_step = self.step if self.step else None
        if dist.is_main:
            text = json.dumps(recipe.to_dict(), indent=2) + "\n"
            atomic_write(out / RECIPE_FILE, lambda path: path.write_text(text))
        self.log = MetricsLog(out, dist, self.step, tensorboard)
        stack.callback(self.log.close)
        if changes and dist.is_main:
            described = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            tqdm.write(f"resuming {out} at step {self.step} with {described}")
            log_changes = {k: list(v) for k, v in changes.items()}
            self.log.write({"step": self.step, "recipe_changes": log_changes})
        stack.enter_context(synchronised_batch_norms(self.prepared, dist))
        self.trained = DistributedDataParallel(self.prepared) if dist.enabled else self.prepared
        self.last_checkpoint = time.perf_counter()
        self.bar = tqdm(
            total=self.plan.stop_after,
            initial=self.step,
            disable=not (progress and dist.is_main),
            desc=f"{recipe.name}",
            unit="step",
            dynamic_ncols=True,
        )
        stack.enter_context(self.bar)

    def checkpoint(self) -> None:
        """Save the run's state (every process refuses a non-finite one together)."""
        state = {
            "step": self.step,
            "elapsed": self.clock.elapsed(),
            "recipe": self.recipe.to_dict(),
            "data": self.fingerprint,
            "model": self.prepared.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state if self.ema else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
        }
        _refuse_non_finite(state, self.step, self.saved_step, self.out, self.dist)
        if self.dist.is_main:
            save_checkpoint(self.out, state)
        self.saved_step = self.step
        self.last_checkpoint = time.perf_counter()
        self.dist.barrier()

    def validate(self, epoch: int) -> None:
        """Validation metrics into the history and the log (epoch 0: at a step between
        epochs)."""
        metrics = _evaluate(
            self.prepared, self.ema, self.val_data, self.plan.per_process, self.dist, self.objective
        )
        metrics.update(epoch=epoch, step=self.step)
        self.history.append(metrics)
        self.log.write(metrics)
        where = f"epoch {epoch}" if epoch else f"step {self.step}"
        self.bar.write(f"{where}: {_summary(metrics)}")

    def loop(self, log_every: int, compile_options: dict[str, Any] | None) -> None:
        """Train until the plan's last step, a stop request or the end of the time budget."""
        recipe, dist, plan = self.recipe, self.dist, self.plan
        seeded = SeededExamples(self.train_data, recipe.seed, recipe.epoch_size or None)
        # validation batches: the end of a run with a time budget validates, within the budget
        val_batches = len(self.val_data) / plan.per_process / 2 if self.val_data else 0.0  # type: ignore[arg-type]
        end_steps = 1.0 + val_batches
        b_set: float | None = None  # the B the layers have, once the loop has set it
        compiled = False
        started = time.perf_counter()
        with _stop_requests() as requests:
            while self.step < plan.stop_after and self.stopped_by is None and not self.budget_spent:
                epoch, start_batch = divmod(self.step, plan.steps_per_epoch)
                loader = build_loader(
                    seeded,
                    batch_size=plan.per_process,
                    seed=recipe.seed,
                    epoch=epoch,
                    rank=dist.rank,
                    world=dist.world,
                    start_batch=start_batch,
                    num_workers=recipe.num_workers,
                )
                for batch in loader:
                    step_started = time.perf_counter()
                    images, labels = batch[0].to(dist.device), batch[1].to(dist.device)
                    if images.ndim == 4:
                        self.input_size = (images.shape[-2], images.shape[-1])
                    torch.manual_seed(mix_seed(recipe.seed, self.step, dist.rank))
                    fraction = self.clock.fraction()
                    lr = learning_rate_at(recipe, self.step, plan.total_steps, fraction)
                    if hasattr(self.objective, "progress"):
                        done = self.step / plan.total_steps if fraction is None else fraction
                        self.objective.progress(done)  # type: ignore[union-attr]
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    b = b_at(recipe, self.step)
                    if self.is_bcos and b != b_set:  # B changes only while it is ramped
                        set_b_(self.prepared, b)
                        b_set = b
                    if compile_options is not None and not compiled and b == recipe.b:
                        compile_model(self.prepared, **compile_options)
                        compiled = True
                    loss, correct = _step(
                        self.trained,
                        self.optimizer,
                        images,
                        labels,
                        recipe,
                        self.scaler,
                        self.objective,
                    )
                    if self.ema:
                        self.ema.update(self.prepared)
                    self.step += 1
                    self.bar.update(1)
                    # one reduction: the metrics, and the stop requests of every process, so
                    # that all of them stop at the same step
                    self.clock.step_took(time.perf_counter() - step_started)
                    loss_sum, correct_sum, count, interrupts, terminations, spent = dist.sum(
                        [
                            loss * len(labels),
                            correct,
                            len(labels),
                            *requests.flags(),
                            float(self.clock.exhausted(end_steps)),
                        ]
                    )
                    self.budget_spent = spent > 0
                    self.stopped_by = (
                        signal.SIGTERM if terminations else signal.SIGINT if interrupts else None
                    )
                    self.bar.set_postfix(loss=f"{loss_sum / count:.4f}", lr=f"{lr:.2e}")
                    if self.step % log_every == 0 or self.step == plan.stop_after:
                        self.log.write(
                            {
                                "step": self.step,
                                "epoch": epoch,
                                "loss": loss_sum / count,
                                "lr": lr,
                                "accuracy": None if self.objective else correct_sum / count,
                                "b": b if self.is_bcos else None,
                                "time": time.perf_counter() - started,
                            }
                        )
                    if not math.isfinite(loss_sum):
                        raise DivergenceError(
                            _divergence(
                                f"the loss is {loss_sum / count}",
                                self.step,
                                self.saved_step,
                                self.out,
                            )
                        )
                    stop = self._after_step(epoch)
                    if stop:
                        break

    def _after_step(self, epoch: int) -> bool:
        """The checkpoint and validation a step makes due; whether the run stops here."""
        recipe, step = self.recipe, self.step
        stop = self.stopped_by is not None or step >= self.plan.stop_after or self.budget_spent
        epoch_end = step % self.plan.steps_per_epoch == 0
        due = step % recipe.checkpoint_every == 0 or epoch_end
        if recipe.checkpoint_minutes is not None:
            due = due and time.perf_counter() - self.last_checkpoint >= (
                60 * recipe.checkpoint_minutes
            )
        if due or stop:
            # with a time budget, validation is for the end only; a label-free run reports its
            # agreement with the original however it ends
            end_validation = self.objective is not None or recipe.time_budget is not None
            if epoch_end and self.val_data is not None and recipe.time_budget is None:
                self.validate(epoch + 1)
            elif stop and self.val_data is not None and end_validation:
                self.validate(0)
            self.checkpoint()
        return stop

    def finish(self, classes: list[str] | None) -> TrainResult:
        """The EMA weights in place, the liveness check, and ``model/`` written however the
        run ended (while the run folder is still held)."""
        dist = self.dist
        finished = self.step >= self.plan.total_steps or self.budget_spent
        if self.ema:
            self.prepared.load_state_dict(self.ema.state)
        network = trained_network(self.prepared)
        if dist.is_main and self.objective is None:
            _warn_if_constant(network, self.val_data or self.train_data, dist.device)
        if dist.is_main:
            _save_model(network, self.out / MODEL_DIR, classes, self.input_size)
        dist.barrier()
        signal_ = None if finished else self.stopped_by
        return TrainResult(network, self.step, finished, self.history, self.out, signal_)


def _check_data_classes(
    model: nn.Module, train_data: Dataset, val_data: Dataset | None
) -> list[str] | None:
    """The class list of the data (None when it has none), checked: at least two classes, the
    same for training and validation, and the model's own, if it has class names."""
    found = getattr(train_data, "classes", None)
    if found is None:
        return None
    classes = [str(c) for c in found]
    if len(classes) < 2:
        raise DataError(
            f"the training data has {format_classes(classes)}: a classifier needs at least two"
        )
    val_classes = getattr(val_data, "classes", None)
    if val_classes is not None:
        check_classes(classes, val_classes, "the training data", "the validation data")
    names = class_names_of(model)
    if names is not None:
        check_classes(names, classes, "the model", "the training data")
    return classes


@torch.no_grad()
def _check_outputs(model: nn.Module, data: Dataset, classes: list[str]) -> None:
    """The model must have one output per class: run it on one example to see (in evaluation
    mode and with the random state put back, so that training is unaffected)."""
    with torch.random.fork_rng(devices=[]):
        image = data[0][0]
        was_training = model.training
        model.eval()
        try:
            outputs = model(image[None].to(device_of(model)))
        finally:
            model.train(was_training)
    if outputs.ndim == 2 and outputs.shape[1] != len(classes):
        raise DataError(
            f"the model has {outputs.shape[1]} outputs but the data has {format_classes(classes)}:"
            " build the model with one output per class (num_classes)"
        )


def _refuse_non_finite(
    state: dict[str, Any], step: int, saved_step: int | None, out: Path, dist: Distributed
) -> None:
    """A :class:`DivergenceError` on every process when ``state`` holds a non-finite value."""
    bad = non_finite_entries({k: state[k] for k in ("model", "optimizer", "ema")})
    (count,) = dist.sum([float(len(bad))])
    if count:
        where = f": {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}" if bad else ""
        raise DivergenceError(
            _divergence(f"{int(count)} tensors hold NaN or infinity{where}", step, saved_step, out)
        )


def _divergence(what: str, step: int, saved_step: int | None, out: Path) -> str:
    """What went wrong at ``step``, what is on disk, and how to go on."""
    advice = (
        f"{out}/{CHECKPOINT_FILE} holds step {saved_step}; resume from it with a lower learning "
        "rate: run the same command with a smaller --lr (or --set lr=...; "
        f"{', '.join(RESUMABLE_CHANGES[:4])} may change on resume)"
        if saved_step is not None
        else "no checkpoint was written yet; run the same command with a smaller --lr"
    )
    return (
        f"training diverged at step {step}: {what}. Nothing from this step was saved: {advice}, "
        "or start over with another --out"
    )


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    scaler: torch.amp.GradScaler | None,
    objective: Objective | None = None,
) -> tuple[float, int]:
    """One optimizer step over ``grad_accumulation`` micro-batches; returns (loss, correct)
    (correct is 0 under an objective)."""
    model.train()
    if recipe.norms == "frozen":  # running statistics, as fitted; scale and bias still train
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, BcosBatchNorm2d)):
                module.eval()
    total_loss, correct = 0.0, 0
    chunks = list(
        zip(
            images.chunk(recipe.grad_accumulation),
            labels.chunk(recipe.grad_accumulation),
            strict=True,
        )
    )
    for i, (x, y) in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = (
            contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        )
        with sync, _autocast(recipe, images.device):
            logits = model(x)
            if objective is None:
                loss = classification_loss(recipe.loss, logits.float(), y)
            else:
                loss = objective(logits.float(), x, y)
            scaled = loss * len(y) / len(labels)
            (scaler.scale(scaled) if scaler else scaled).backward()
        total_loss += float(loss.detach()) * len(y) / len(labels)
        if objective is None:
            correct += int((logits.detach().argmax(1) == y).sum())
    if scaler:
        scaler.unscale_(optimizer)
    if recipe.agc_clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        adaptive_clip_grad_(params, recipe.agc_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, correct


def _autocast(recipe: Recipe, device: torch.device) -> contextlib.AbstractContextManager:
    if recipe.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if recipe.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _evaluate(
    model: nn.Module,
    ema: ExponentialMovingAverage | None,
    data: Dataset,
    batch_size: int,
    dist: Distributed,
    objective: Objective | None = None,
) -> dict[str, Any]:
    check = validate if objective is None else objective.validate
    if ema is None:
        return check(model, data, batch_size=batch_size, dist=dist)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.state)
    try:
        return check(model, data, batch_size=batch_size, dist=dist)
    finally:
        model.load_state_dict(raw)


def _summary(metrics: dict[str, Any]) -> str:
    """``val accuracy 91.20%, val loss 0.2345`` (classification), else every ``val_`` metric."""
    if "val_top1" in metrics:
        return f"val accuracy {metrics['val_top1']:.2%}, val loss {metrics['val_loss']:.4f}"
    values = [(k, v) for k, v in metrics.items() if k.startswith("val_")]
    return ", ".join(f"{k.removeprefix('val_').replace('_', ' ')} {v:.4f}" for k, v in values)


@torch.no_grad()
def _warn_if_constant(model: nn.Module, data: Dataset, device: torch.device) -> None:
    """Warn when the trained model's outputs on up to 32 examples do not depend on them."""
    count = min(32, len(data))  # type: ignore[arg-type]
    inputs = torch.stack([data[i][0] for i in range(count)]).to(device)
    training = model.training
    try:
        outputs = model.eval()(inputs)
    finally:
        model.train(training)
    warn_if_constant(outputs, "the trained model", stacklevel=3)


def _save_model(
    model: nn.Module,
    directory: Path,
    classes: Sequence[str] | None,
    input_size: tuple[int, int] | None = None,
) -> None:
    """Save the trained model, with the dataset's class names when it has them, and the image
    size it was trained at (which evaluation and explanations then default to)."""
    from ..models.saving import save_model
    from ..models.sources import source_info

    names = list(classes) if classes else None
    if isinstance(model, TextClassifier):  # a transformers folder, as transformers saves it
        if names:
            model.model.config.id2label = dict(enumerate(names))
            model.model.config.label2id = {name: i for i, name in enumerate(names)}
        model.model.save_pretrained(directory, safe_serialization=True)
        return
    if isinstance(model, (BcosModel, BcosTextModel)):
        if names:
            model.config.class_names = names
        if isinstance(model, BcosModel) and input_size:
            model.config.input_size = input_size
        model.save_pretrained(directory)
        return
    info = source_info(model)
    if info:
        size = input_size or info.input_size
        model.bcosify_source = replace(  # type: ignore[assignment]
            info, class_names=names or info.class_names, input_size=size
        )
    save_model(model, directory, class_names=names)


class _StopRequests:
    """The SIGINT and SIGTERM received since the loop started (a second one stops at once)."""

    def __init__(self) -> None:
        self.received: set[int] = set()

    def __call__(self, signum: int, frame: object) -> None:
        if self.received:  # a second request: stop at once
            signal.default_int_handler(signum, frame)
        self.received.add(signum)

    def flags(self) -> tuple[float, float]:
        """(SIGINT received, SIGTERM received), as numbers to sum over the processes."""
        return float(signal.SIGINT in self.received), float(signal.SIGTERM in self.received)


@contextlib.contextmanager
def _stop_requests() -> Iterator[_StopRequests]:
    """SIGINT and SIGTERM are recorded instead of stopping the process, so that the loop can
    checkpoint and stop cleanly (outside the main thread, where handlers cannot be set, they
    are not)."""
    requests = _StopRequests()
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, requests)
    try:
        yield requests
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
