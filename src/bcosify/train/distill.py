"""Aligning a B-cos student to its frozen original, without labels (RECIPE 8 and 9).

The student is the converted model (starting from the pretrained weights, or from random
weights for comparison), the teacher the frozen original; nothing but images is read.

- :func:`align` (label-free B-cosification, as ALOE does it): the loss is the sum of
  ``1 - cosine`` between student and teacher features at a few module paths (the same paths in
  both, since the converter keeps the module tree; by default three, spread over the depth,
  picked by :func:`alignment_paths`) and the output term on the outputs (logits without the
  logit bias, or embeddings). It works for any converted model: CNNs, ViTs, CLIP image towers.
- :func:`distill` is its special case for CLIP image towers (RECIPE 8): the output term only,
  on the L2-normalised embeddings: ``"cosine"`` (one minus the cosine similarity) or
  ``"siglip"`` (SigLIP's pairwise sigmoid loss over the batch, every student embedding against
  every teacher embedding, with scale 10 and bias -10).

Any folder of images is data (:class:`~bcosify.data.UnlabelledImages`). The fine-tuning engine
(:func:`bcosify.train.train`) runs it, so runs resume exactly and scale to DDP.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..convert import BcosModel
from ..convert.blockwise import stage_sequence
from ..convert.clip import BcosCLIP, convert_clip
from ..device import device_of
from ..errors import CheckpointError, ModelSourceError
from ..models.clip import as_clip
from ..nn import BcosBatchNorm2d
from ..serialization import atomic_write
from .checkpoint import CHECKPOINT_FILE
from .distributed import Distributed, setup_distributed
from .loading import build_loader
from .loop import TrainResult, train
from .prepare import Normalized, input_normalization, prepare_model
from .recipes import Recipe, RecipeError, get_recipe
from .run_folder import hold_run_folder

__all__ = [
    "CLIP_RUN_DIR",
    "SIGLIP_BIAS",
    "SIGLIP_SCALE",
    "Alignment",
    "AlignmentConfig",
    "Distillation",
    "DistillationConfig",
    "DistillationResult",
    "align",
    "alignment_paths",
    "cosine_distillation_loss",
    "distill",
    "feature_cosine",
    "kl_distillation_loss",
    "normalised_mse",
    "prediction_agreement",
    "siglip_distillation_loss",
]

# the fixed scale and bias of the SigLIP-style distillation loss (RECIPE 8)
SIGLIP_SCALE = 10.0
SIGLIP_BIAS = -10.0
CONFIG_FILE = "distillation.json"
CLIP_RUN_DIR = "clip"

DistillationLoss = Literal["cosine", "siglip", "kl"]
FeatureLoss = Literal["cosine", "mse"]


def cosine_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean of ``1 - cos(student_i, teacher_i)`` over the batch.

    Example:
        >>> float(cosine_distillation_loss(torch.eye(2), 3 * torch.eye(2)))
        0.0
    """
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def kl_distillation_loss(student: Tensor, teacher: Tensor, temperature: float = 2.0) -> Tensor:
    """``KL(softmax(teacher / T) || softmax(student / T)) * T^2``, averaged over the batch: the
    classic distillation loss on logits (Hinton et al.), which cares about the classes the
    teacher ranks high, and so about agreeing with its predictions.

    Example:
        >>> logits = torch.randn(4, 10)
        >>> float(kl_distillation_loss(logits, logits)) < 1e-6
        True
        >>> bool(kl_distillation_loss(logits, logits.flip(1)) > 0.1)
        True
    """
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    divergence = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
    return divergence * temperature**2


def normalised_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """``||student - teacher||^2 / ||teacher||^2`` over the batch: a feature loss that keeps
    the scale of the features (which the next layers' frozen statistics expect), unlike the
    cosine.

    Example:
        >>> x = torch.randn(2, 4, 3, 3)
        >>> float(normalised_mse(x, x)), float(normalised_mse(torch.zeros_like(x), x))
        (0.0, 1.0)
    """
    student, teacher = student.float(), teacher.float()
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


def siglip_distillation_loss(
    student: Tensor, teacher: Tensor, *, scale: float = SIGLIP_SCALE, bias: float = SIGLIP_BIAS
) -> Tensor:
    """SigLIP's sigmoid loss between L2-normalised student and teacher embeddings.

    Every pair ``(i, j)`` of the batch is a binary problem: ``student_i`` matches ``teacher_j``
    only when ``i == j``; its logit is ``scale * cos(student_i, teacher_j) + bias``. The loss
    is the summed negative log-likelihood over the pairs divided by the batch size.

    Example:
        >>> x = torch.eye(3)
        >>> bool(siglip_distillation_loss(x, x) < siglip_distillation_loss(x, x.roll(1, 0)))
        True
    """
    logits = scale * F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T + bias
    signs = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / len(logits)


@dataclass(frozen=True)
class DistillationConfig:
    """The distillation loss, saved with a run as ``distillation.json``.

    Attributes:
        loss: ``"cosine"``, ``"siglip"`` (embeddings) or ``"kl"`` (a classifier's logits, at
            ``temperature``).
        siglip_scale, siglip_bias: the fixed scale and bias of the SigLIP loss.
        temperature: of the ``"kl"`` loss.

    Example:
        >>> DistillationConfig("siglip").siglip_bias
        -10.0
    """

    loss: DistillationLoss = "cosine"
    siglip_scale: float = SIGLIP_SCALE
    siglip_bias: float = SIGLIP_BIAS
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.loss not in ("cosine", "siglip", "kl"):
            raise RecipeError(f"loss must be 'cosine', 'siglip' or 'kl', got {self.loss!r}")
        if not self.siglip_scale > 0:
            raise RecipeError(f"siglip_scale must be positive, got {self.siglip_scale}")
        if not self.temperature > 0:
            raise RecipeError(f"temperature must be positive, got {self.temperature}")

    def __call__(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.loss == "cosine":
            return cosine_distillation_loss(student, teacher)
        if self.loss == "kl":
            return kl_distillation_loss(student, teacher, self.temperature)
        return siglip_distillation_loss(
            student, teacher, scale=self.siglip_scale, bias=self.siglip_bias
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_cosine(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean cosine similarity of two feature maps along their channels: dimension 1 of
    ``(N, C, H, W)`` maps, the last one of token sequences ``(N, T, D)`` and vectors.

    Example:
        >>> x = torch.randn(2, 4, 3, 3)
        >>> float(feature_cosine(x, 2 * x))
        1.0
    """
    dim = 1 if student.ndim == 4 else -1
    return F.cosine_similarity(student.float(), teacher.float(), dim=dim).mean()


@dataclass(frozen=True)
class AlignmentConfig:
    """What :class:`Alignment` compares: features at ``paths`` and the outputs.

    Attributes:
        paths: module paths of the original (the same in the converted network) whose outputs
            are compared.
        output: the loss on the outputs (:class:`DistillationConfig`).
        features: how the features at ``paths`` are compared: ``"cosine"`` (``1 - cosine``
            along the channels) or ``"mse"`` (:func:`normalised_mse`).
        forcing: the fraction of the run during which the student's modules at ``paths`` take
            the teacher's input to them instead of their own (teacher forcing), each with a
            probability that falls linearly from 1 to 0 over that fraction. Forced, every
            module learns to reproduce the teacher's from the teacher's input, independently
            of the others, as block-wise reconstruction does (BRECQ), all in one pass; then the
            student runs on its own inputs. 0 turns it off.

    Example:
        >>> AlignmentConfig(("layer2", "layer4")).to_dict()["paths"]
        ['layer2', 'layer4']
    """

    paths: tuple[str, ...] = ()
    output: DistillationConfig = DistillationConfig()
    features: FeatureLoss = "cosine"
    forcing: float = 0.0

    def __post_init__(self) -> None:
        if self.features not in ("cosine", "mse"):
            raise RecipeError(f"features must be 'cosine' or 'mse', got {self.features!r}")
        if not 0.0 <= self.forcing <= 1.0:
            raise RecipeError(f"forcing must be in [0, 1], got {self.forcing}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.output.to_dict(),
            "paths": list(self.paths),
            "features": self.features,
            "forcing": self.forcing,
        }


def _first_tensor(output: Any) -> Tensor:
    """A module's output, or the first tensor of a tuple (attention modules return some)."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


class _Features:
    """Forward hooks that keep the last output (and, with ``inputs``, the first positional
    input) of modules, by path."""

    def __init__(self, root: nn.Module, paths: tuple[str, ...], inputs: bool = False) -> None:
        self.values: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        modules = [(path, root.get_submodule(path)) for path in paths]
        self._handles = [
            module.register_forward_hook(self._keeper(path)) for path, module in modules
        ]
        if inputs:
            self._handles += [
                module.register_forward_pre_hook(self._input_keeper(path))
                for path, module in modules
            ]

    def _keeper(self, path: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            self.values[path] = _first_tensor(output)

        return keep

    def _input_keeper(self, path: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], Tensor):
                self.inputs[path] = args[0]

        return keep

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class Alignment(nn.Module):
    """The training objective: the student's features and outputs against the frozen teacher's.

    ``teacher`` maps images in ``[0, 1]`` to the original's outputs; it runs without gradients
    in evaluation mode. For ``config.paths``, ``student_root`` and ``teacher_root`` are the
    modules in which the paths name the same layers (the converted network and the original);
    hooks keep their outputs (:meth:`close` removes them). The output term compares the
    student's outputs (less its logit bias, ``output_offset``) with the teacher's. An
    :class:`~bcosify.train.loop.Objective` for :func:`bcosify.train.train`.

    ``classifier``: the outputs are logits, so validation also measures the agreement with the
    teacher's predictions. With ``config.forcing``, ``student`` (the model the loop trains,
    taking the images) runs
    the teacher first in training mode, and each student module at ``config.paths`` takes the
    teacher's input to it instead of its own with the probability :meth:`progress` sets.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Flatten())
        >>> objective = Alignment(net, AlignmentConfig(("0",)), net, net)
        >>> images = torch.rand(2, 3, 2, 2)
        >>> float(objective(net(images), images, torch.zeros(2))) < 1e-6
        True
    """

    def __init__(
        self,
        teacher: nn.Module,
        config: AlignmentConfig,
        student_root: nn.Module | None = None,
        teacher_root: nn.Module | None = None,
        output_offset: float = 0.0,
        student: nn.Module | None = None,
        classifier: bool = False,
    ) -> None:
        super().__init__()
        if config.paths and (student_root is None or teacher_root is None):
            raise RecipeError("aligning features needs the student's and the teacher's modules")
        forcing = config.forcing > 0 and bool(config.paths)
        if forcing and student is None:
            raise RecipeError("teacher forcing needs the student model (student=)")
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.output_offset = output_offset
        self.classifier = classifier
        self._student = _Features(student_root, config.paths) if config.paths else None
        self._teacher = _Features(teacher_root, config.paths, forcing) if config.paths else None
        self.forcing_probability = 1.0 if forcing else 0.0
        self._target: tuple[Tensor, Tensor] | None = None  # (images, the teacher's output)
        self._handles = []
        if forcing and student is not None and student_root is not None:
            self._handles.append(student.register_forward_pre_hook(self._run_teacher_first))
            self._handles += [
                student_root.get_submodule(path).register_forward_pre_hook(self._forcer(path))
                for path in config.paths
            ]

    def close(self) -> None:
        """Remove the hooks from the student and the teacher."""
        for features in (self._student, self._teacher):
            if features is not None:
                features.remove()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def progress(self, fraction: float) -> None:
        """Set the forcing probability for the run's progress (see :class:`AlignmentConfig`)."""
        if self.config.forcing > 0 and self._handles:
            self.forcing_probability = max(0.0, 1.0 - fraction / self.config.forcing)

    def _run_teacher_first(self, module: nn.Module, args: tuple) -> None:
        """Before a training forward pass that forcing may touch: the teacher's inputs."""
        self._target = None
        if module.training and self.forcing_probability > 0 and self._teacher is not None:
            self._teacher.inputs.clear()
            images = args[0]
            with torch.no_grad():
                self._target = (images, self.teacher(images).float())

    def _forcer(self, path: str) -> Callable[..., Any]:
        def force(module: nn.Module, args: tuple) -> tuple | None:
            if self._target is None or self._teacher is None or path not in self._teacher.inputs:
                return None
            if float(torch.rand(())) >= self.forcing_probability:
                return None
            return (self._teacher.inputs[path], *args[1:])

        return force

    def _teacher_output(self, images: Tensor) -> Tensor:
        """The teacher's output on ``images``: the one computed before a forced forward pass
        on these very images, else a new one."""
        if self._target is not None and self._target[0] is images:
            return self._target[1]
        with torch.no_grad():
            return self.teacher(images).float()

    def terms(self, outputs: Tensor, images: Tensor) -> dict[str, Tensor]:
        """``{"output": output loss, path: feature loss, ...}`` of a batch the student has just
        computed ``outputs`` for."""
        target = self._teacher_output(images)
        self._target = None
        terms = {"output": self.config.output(outputs.float() - self.output_offset, target)}
        if self._student is not None and self._teacher is not None:
            for path in self.config.paths:
                student, teacher = self._student.values[path], self._teacher.values[path]
                if self.config.features == "mse":
                    terms[path] = normalised_mse(student, teacher)
                else:
                    terms[path] = 1 - feature_cosine(student, teacher)
        return terms

    def forward(self, outputs: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        return sum(self.terms(outputs, images).values())  # type: ignore[return-value]

    @torch.no_grad()
    def validate(
        self, model: nn.Module, data: Dataset, *, batch_size: int, dist: Distributed
    ) -> dict[str, Any]:
        """``val_loss`` (the loss per batch, averaged), ``val_cosine`` (the mean cosine of the
        outputs), per aligned path ``val_cosine_<path>`` and, for a classifier, the agreement
        with the original's predictions: ``val_agreement`` (the same top class) and
        ``val_top5_overlap`` (the share of the original's top 5 among the student's), over all
        processes."""
        was_training = model.training
        model.eval()
        keys = ["loss", "cosine", "agreement", "top5_overlap", *self.config.paths]
        totals = dict.fromkeys(keys, 0.0)
        batches = count = 0.0
        loader = build_loader(
            data, batch_size=batch_size, seed=0, epoch=0, rank=dist.rank, world=dist.world,
            train=False,
        )  # fmt: skip
        device = device_of(model)
        try:
            for batch in loader:
                images = batch[0].to(device)
                outputs = model(images)
                target = self.teacher(images).float()
                self._target = (images, target)
                terms = self.terms(outputs, images)
                student = outputs.float() - self.output_offset
                totals["loss"] += float(sum(terms.values()))
                totals["cosine"] += float(F.cosine_similarity(student, target, dim=-1).sum())
                if self.classifier:
                    agree, overlap = prediction_agreement(student, target)
                    totals["agreement"] += float(agree.sum())
                    totals["top5_overlap"] += float(overlap.sum())
                for path in self.config.paths:
                    cosine = feature_cosine(self._student.values[path], self._teacher.values[path])  # type: ignore[union-attr]
                    totals[path] += float(cosine) * len(images)
                batches += 1
                count += len(images)
        finally:
            model.train(was_training)
        reduced = dist.sum([*totals.values(), batches, count])
        *values, batches, count = reduced
        metrics = dict(zip(keys, values, strict=True))
        result = {"val_loss": metrics.pop("loss") / max(batches, 1)}
        for key in ("agreement", "top5_overlap"):
            value = metrics.pop(key)
            if self.classifier:
                result[f"val_{key}"] = value / max(count, 1)
        result |= {
            f"val_cosine{'_' + k if k != 'cosine' else ''}": v / max(count, 1)
            for k, v in metrics.items()
        }
        return result


class Distillation(Alignment):
    """Alignment of the outputs only: a CLIP image tower's embeddings (RECIPE 8).

    Example:
        >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        >>> objective = Distillation(teacher, DistillationConfig("cosine"))
        >>> images = torch.rand(2, 3, 2, 2)
        >>> float(objective(teacher(images), images, torch.zeros(2))) < 1e-6
        True
    """

    def __init__(self, teacher: nn.Module, config: DistillationConfig) -> None:
        super().__init__(teacher, AlignmentConfig((), config))


def prediction_agreement(student: Tensor, teacher: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Per example: whether the student's top class is the teacher's (1.0 or 0.0), and the
    share of the teacher's top ``k`` classes among the student's top ``k``.

    Example:
        >>> teacher = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
        >>> student = torch.tensor([[5.0, 4, 3, 2, 0, 1], [5.0, 4, 3, 2, 1, 0]])
        >>> agree, overlap = prediction_agreement(student, teacher)
        >>> agree.tolist(), overlap.tolist()
        ([1.0, 0.0], [0.800000011920929, 0.800000011920929])
    """
    k = min(k, teacher.shape[-1])
    agree = (student.argmax(-1) == teacher.argmax(-1)).float()
    top_student = F.one_hot(student.topk(k, -1).indices, teacher.shape[-1]).sum(-2)
    top_teacher = F.one_hot(teacher.topk(k, -1).indices, teacher.shape[-1]).sum(-2)
    overlap = (top_student * top_teacher).sum(-1).float() / k
    return agree, overlap


def alignment_paths(root: nn.Module, run: Callable[[], Any], count: int = 3) -> tuple[str, ...]:
    """``count`` module paths spread over the depth of a network, for :func:`align`.

    ``run()`` runs the network's forward once; the paths are the network's stages
    (:func:`bcosify.convert.blockwise.stage_sequence`: a ResNet's ``layer1..4``, a ViT's
    ``blocks``, an EfficientNet's ``features``) at ``1/count, 2/count, ..., 1`` of their number.

    Example:
        >>> import torch
        >>> from bcosify.models import create
        >>> net = create("torchvision:resnet18", num_classes=3).eval()
        >>> alignment_paths(net, lambda: net(torch.rand(1, 3, 32, 32)))
        ('layer2', 'layer3', 'layer4')
    """
    sequence = stage_sequence(root, run)
    if not sequence:
        raise RecipeError(
            f"{type(root).__name__} calls no submodule with submodules of its own: name the "
            "module paths to align (align_paths)"
        )
    if len(sequence) < count:
        return tuple(sequence)
    return tuple(sequence[math.ceil(k * len(sequence) / count) - 1] for k in range(1, count + 1))


@dataclass
class DistillationResult:
    """What :func:`distill` or :func:`align` did: the student (a :class:`BcosCLIP` for a CLIP
    model, else a :class:`~bcosify.convert.BcosModel`), its training result and the config."""

    model: nn.Module
    train: TrainResult
    config: AlignmentConfig | None = None


def distill(
    model: nn.Module,
    train_data: Dataset,
    out_dir: str | Path,
    *,
    recipe: Recipe | None = None,
    loss: DistillationLoss | DistillationConfig | None = None,
    val_data: Dataset | None = None,
    tokenizer: Any = None,
    **train_options: Any,
) -> DistillationResult:
    """Distil the B-cos image tower of a CLIP model from the frozen original.

    ``model`` is a :class:`BcosCLIP` (its tower is trained in place) or a CLIP model, which is
    converted first with :func:`~bcosify.convert.convert_clip` at ``recipe.b`` with
    ``recipe.activations``. With ``recipe.model == "bcosify"`` (the default) the student starts
    from the pretrained weights; with ``"bcos-scratch"`` its layers are re-initialised first.
    Writes what :func:`bcosify.train.train` writes, plus ``distillation.json`` and, when the run
    finishes, the whole B-cos CLIP in ``clip/`` (load it with
    :func:`~bcosify.convert.load_clip`). A run resumes only with the same loss. This is
    :func:`align` with the output term only.

    Args:
        train_data, val_data: datasets whose items start with an image in ``[0, 1]`` (labels,
            when there are any, are ignored).
        recipe: defaults to ``get_recipe("bcosify-clip")``.
        loss: ``"cosine"``, ``"siglip"`` or a :class:`DistillationConfig`; None takes the
            recipe's ``loss``.
        **train_options: passed to :func:`bcosify.train.train` (``max_steps``, ``device``, ...).

    Example:
        >>> import open_clip, tempfile, torch
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> data = torch.utils.data.TensorDataset(torch.rand(8, 3, 16, 16), torch.zeros(8))
        >>> result = distill(open_clip.CLIP(8, vision, text), data, tempfile.mkdtemp(),
        ...                  recipe=get_recipe("bcosify-clip", epochs=1, batch_size=4),
        ...                  progress=False)
        >>> result.train.step, sorted(p.name for p in (result.train.run_dir / "clip").iterdir())
        (2, ['config.json', 'model.safetensors'])
    """
    recipe = recipe or get_recipe("bcosify-clip")
    recipe = replace(recipe, align_paths=(), align_depths=0)
    return align(
        model,
        train_data,
        out_dir,
        recipe=recipe,
        loss=loss,
        val_data=val_data,
        tokenizer=tokenizer,
        **train_options,
    )


def align(
    model: nn.Module,
    train_data: Dataset,
    out_dir: str | Path,
    *,
    recipe: Recipe | None = None,
    loss: DistillationLoss | DistillationConfig | None = None,
    val_data: Dataset | None = None,
    tokenizer: Any = None,
    **train_options: Any,
) -> DistillationResult:
    """B-cosify ``model`` without labels: align the converted student to the frozen original.

    ``model`` is the original (a classifier, or a CLIP model whose image tower is converted
    with :func:`~bcosify.convert.convert_clip`) or a :class:`BcosCLIP`; it is converted at
    ``recipe.b`` with ``recipe.activations`` and ``recipe.keep_bias``
    (``recipe.model == "bcos-scratch"``: then re-initialised); with
    ``recipe.align_calibration`` it is then fitted to the original on that many training
    images, in closed form (:func:`bcosify.calibrate`: ``recipe.align_start`` ``"norms"``
    fits its batch norms, ``"layers"`` the weights of its B-cos layers). The loss sums the
    feature term (``recipe.align_features``) between the student's and the original's features
    at ``recipe.align_paths`` (empty: ``recipe.align_depths`` paths picked by
    :func:`alignment_paths`, recorded in the run's ``recipe.json``), teacher-forced for the
    first ``recipe.align_forcing`` of the run, and the output term (``recipe.loss``, or
    ``loss``) on the outputs: logits less the logit bias, or embeddings. Writes what
    :func:`bcosify.train.train` writes (the student in ``model/`` however the run ends; a B-cos
    CLIP in ``clip/``) and ``distillation.json`` (the losses and paths; a run resumes only with
    the same). The validation metrics of a classifier include its agreement with the
    original's predictions (``val_agreement``, ``val_top5_overlap``).

    Args:
        train_data, val_data: datasets whose items start with an image in ``[0, 1]`` (labels,
            when there are any, are ignored).
        recipe: defaults to ``get_recipe("bcosify-align")``.
        **train_options: passed to :func:`bcosify.train.train` (``max_steps``, ``device``, ...).

    Example:
        >>> import tempfile, torch
        >>> from bcosify.models import create
        >>> data = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8))
        >>> result = align(create("torchvision:resnet18", num_classes=3), data, tempfile.mkdtemp(),
        ...                recipe=get_recipe("bcosify-align", epochs=1, batch_size=4,
        ...                                  epoch_size=8, image_size=32), progress=False)
        >>> result.config.paths, result.train.step
        (('layer1', 'layer2', 'layer3', 'layer4'), 2)
    """
    recipe = recipe or get_recipe("bcosify-align")
    if recipe.model not in ("bcosify", "bcos-scratch"):
        raise RecipeError(
            f"alignment trains a B-cos student: recipe.model must be 'bcosify' (from the "
            f"pretrained weights) or 'bcos-scratch' (from random weights), got {recipe.model!r}"
        )
    output = (
        loss
        if isinstance(loss, DistillationConfig)
        else DistillationConfig(loss or recipe.loss, temperature=recipe.temperature)
    )
    out = Path(out_dir)
    dist = setup_distributed(train_options.get("device"))
    student, teacher, roots, clip = _student_and_teacher(model, recipe, tokenizer)
    paths = recipe.align_paths
    if not paths and recipe.align_depths:
        sample = train_data[0][0].unsqueeze(0)
        paths = alignment_paths(roots[1], lambda: teacher(sample), recipe.align_depths)
    # recipe.json records the loss and the paths trained with
    recipe = replace(recipe, loss=output.loss, align_paths=paths)
    config = AlignmentConfig(paths, output, recipe.align_features, recipe.align_forcing)
    bias = getattr(student.logit_bias, "bias", None) if hasattr(student, "logit_bias") else None
    objective = Alignment(
        teacher,
        config,
        *roots,
        output_offset=float(bias) if bias is not None else 0.0,
        student=student,
        classifier=clip is None,
    )
    try:
        with hold_run_folder(out, dist):  # the whole run, train's own hold included
            _check_resumable(out, config, train_options.get("resume", True))
            fresh = not (train_options.get("resume", True) and (out / CHECKPOINT_FILE).is_file())
            if recipe.align_calibration and clip is None and fresh:
                _fit_to_the_original(student, roots[1], train_data, recipe)
            if dist.is_main:
                text = json.dumps(config.to_dict(), indent=2) + "\n"
                atomic_write(out / CONFIG_FILE, lambda path: path.write_text(text))
            result = train(
                student, train_data, recipe, out, val_data=val_data, objective=objective,
                **train_options,
            )  # fmt: skip
    finally:
        objective.close()
    if clip is None:
        return DistillationResult(result.model, result, config)
    clip.visual = result.model
    if dist.is_main:  # however the run ended, as train writes model/
        clip.save_pretrained(out / CLIP_RUN_DIR)
    return DistillationResult(clip, result, config)


def _fit_to_the_original(
    student: nn.Module, original: nn.Module, data: Dataset, recipe: Recipe
) -> None:
    """The start: the student's batch norms (``recipe.align_start == "norms"``, where it has
    any), B-cos layers (``"layers"``) or layers and blocks (``"blocks"``) fitted to the
    original's on ``recipe.align_calibration`` training images (drawn with the run's seed)."""
    from ..convert.calibrate import calibrate

    generator = torch.Generator().manual_seed(recipe.seed)
    size = len(data)  # type: ignore[arg-type]
    indices = torch.randint(size, (recipe.align_calibration,), generator=generator).tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        images = torch.stack([data[i][0] for i in indices]).to(device_of(student))
    if recipe.align_start in ("layers", "blocks"):
        calibrate(
            student, images, method=recipe.align_start, original=original, batch_size=32,
            block_steps=recipe.align_block_steps,
        )  # fmt: skip
    elif any(isinstance(m, BcosBatchNorm2d) for m in student.modules()):
        calibrate(student, images, method="original", original=original)


def _student_and_teacher(
    model: nn.Module, recipe: Recipe, tokenizer: Any
) -> tuple[nn.Module, nn.Module, tuple[nn.Module, nn.Module], BcosCLIP | None]:
    """The student (converted), the teacher (on images in [0, 1]), the modules in which the
    aligned paths are looked up (student's, teacher's), and the B-cos CLIP, if it is one."""
    if isinstance(model, BcosModel):
        raise RecipeError(
            "alignment needs the original as the teacher: pass the original model (it is "
            "converted for you), not a B-cos model"
        )
    clip = model if isinstance(model, BcosCLIP) else None
    if clip is None and _is_clip(model):
        clip = convert_clip(
            model, tokenizer=tokenizer, b=recipe.b, activations=recipe.activations
        ).model
    if clip is not None:
        student = prepare_model(clip.visual, recipe)  # re-initialised for bcos-scratch
        return student, clip.original, (student.network, clip.original.feature_root), clip
    original = copy.deepcopy(model).eval()  # the user's model is left as it is
    student = prepare_model(original, recipe)
    teacher = Normalized(original, *input_normalization(original))
    return student, teacher, (student.network, original), None


def _is_clip(model: nn.Module) -> bool:
    try:
        as_clip(model)
    except ModelSourceError:
        return False
    return True


def _check_resumable(out: Path, config: AlignmentConfig, resume: bool) -> None:
    path = out / CONFIG_FILE
    if not resume or not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} cannot be read ({error}); delete it") from None
    if saved != config.to_dict():
        raise CheckpointError(
            f"{str(out)!r} holds an alignment with another loss or other paths ({saved}); "
            "resume it with the same, or choose another output folder"
        )
