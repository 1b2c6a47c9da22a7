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
from ..convert.clip import BcosCLIP, convert_clip
from ..device import device_of
from ..errors import CheckpointError, ModelSourceError
from ..models.clip import as_clip
from ..serialization import atomic_write
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
    "siglip_distillation_loss",
]

# the fixed scale and bias of the SigLIP-style distillation loss (RECIPE 8)
SIGLIP_SCALE = 10.0
SIGLIP_BIAS = -10.0
CONFIG_FILE = "distillation.json"
CLIP_RUN_DIR = "clip"

DistillationLoss = Literal["cosine", "siglip"]


def cosine_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean of ``1 - cos(student_i, teacher_i)`` over the batch.

    Example:
        >>> float(cosine_distillation_loss(torch.eye(2), 3 * torch.eye(2)))
        0.0
    """
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


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
        loss: ``"cosine"`` or ``"siglip"``.
        siglip_scale, siglip_bias: the fixed scale and bias of the SigLIP loss.

    Example:
        >>> DistillationConfig("siglip").siglip_bias
        -10.0
    """

    loss: DistillationLoss = "cosine"
    siglip_scale: float = SIGLIP_SCALE
    siglip_bias: float = SIGLIP_BIAS

    def __post_init__(self) -> None:
        if self.loss not in ("cosine", "siglip"):
            raise RecipeError(f"loss must be 'cosine' or 'siglip', got {self.loss!r}")
        if not self.siglip_scale > 0:
            raise RecipeError(f"siglip_scale must be positive, got {self.siglip_scale}")

    def __call__(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.loss == "cosine":
            return cosine_distillation_loss(student, teacher)
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
            are compared by ``1 - cosine`` along the channels.
        output: the loss on the outputs (:class:`DistillationConfig`).

    Example:
        >>> AlignmentConfig(("layer2", "layer4")).to_dict()["paths"]
        ['layer2', 'layer4']
    """

    paths: tuple[str, ...] = ()
    output: DistillationConfig = DistillationConfig()

    def to_dict(self) -> dict[str, Any]:
        return {**self.output.to_dict(), "paths": list(self.paths)}


def _first_tensor(output: Any) -> Tensor:
    """A module's output, or the first tensor of a tuple (attention modules return some)."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


class _Features:
    """Forward hooks that keep the last output of modules, by path."""

    def __init__(self, root: nn.Module, paths: tuple[str, ...]) -> None:
        self.values: dict[str, Tensor] = {}
        self._handles = [
            root.get_submodule(path).register_forward_hook(self._keeper(path)) for path in paths
        ]

    def _keeper(self, path: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            self.values[path] = _first_tensor(output)

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
    ) -> None:
        super().__init__()
        if config.paths and (student_root is None or teacher_root is None):
            raise RecipeError("aligning features needs the student's and the teacher's modules")
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        self.output_offset = output_offset
        self._student = _Features(student_root, config.paths) if config.paths else None
        self._teacher = _Features(teacher_root, config.paths) if config.paths else None

    def close(self) -> None:
        """Remove the hooks from the student and the teacher."""
        for features in (self._student, self._teacher):
            if features is not None:
                features.remove()

    def terms(self, outputs: Tensor, images: Tensor) -> dict[str, Tensor]:
        """``{"output": output loss, path: 1 - cosine, ...}`` of a batch the student has just
        computed ``outputs`` for."""
        with torch.no_grad():
            target = self.teacher(images).float()
        terms = {"output": self.config.output(outputs.float() - self.output_offset, target)}
        if self._student is not None and self._teacher is not None:
            for path in self.config.paths:
                student, teacher = self._student.values[path], self._teacher.values[path]
                terms[path] = 1 - feature_cosine(student, teacher)
        return terms

    def forward(self, outputs: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        return sum(self.terms(outputs, images).values())  # type: ignore[return-value]

    @torch.no_grad()
    def validate(
        self, model: nn.Module, data: Dataset, *, batch_size: int, dist: Distributed
    ) -> dict[str, Any]:
        """``val_loss`` (the loss per batch, averaged), ``val_cosine`` (the mean cosine of the
        outputs) and, per aligned path, ``val_cosine_<path>``, over all processes."""
        was_training = model.training
        model.eval()
        keys = ["loss", "cosine", *self.config.paths]
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
                terms = self.terms(outputs, images)
                target = self.teacher(images).float()
                student = outputs.float() - self.output_offset
                totals["loss"] += float(sum(terms.values()))
                totals["cosine"] += float(F.cosine_similarity(student, target, dim=-1).sum())
                for path in self.config.paths:
                    totals[path] += (1 - float(terms[path])) * len(images)
                batches += 1
                count += len(images)
        finally:
            model.train(was_training)
        reduced = dist.sum([*totals.values(), batches, count])
        *values, batches, count = reduced
        metrics = dict(zip(keys, values, strict=True))
        result = {"val_loss": metrics.pop("loss") / max(batches, 1)}
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


def alignment_paths(root: nn.Module, run: Callable[[], Any], count: int = 3) -> tuple[str, ...]:
    """``count`` module paths spread over the depth of a network, for :func:`align`.

    ``run()`` runs the network's forward once. Among the modules with children that it calls,
    the one calling the most of its own children that have children (a ResNet's
    ``layer1..4``, a ViT's ``blocks``, an EfficientNet's ``features``) is the network's sequence
    of stages; the paths are its stages at ``1/count, 2/count, ..., 1`` of their number.

    Example:
        >>> import torch
        >>> from bcosify.models import create
        >>> net = create("torchvision:resnet18", num_classes=3).eval()
        >>> alignment_paths(net, lambda: net(torch.rand(1, 3, 32, 32)))
        ('layer2', 'layer3', 'layer4')
    """
    order: list[str] = []
    containers = {p: m for p, m in root.named_modules() if p and next(m.children(), None)}
    handles = [
        module.register_forward_hook(lambda *_, p=path: order.append(p))
        for path, module in containers.items()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    called = list(dict.fromkeys(order[::-1]))[::-1]  # first calls, in the order they end
    stages: dict[str, list[str]] = {}
    for path in sorted(called, key=order.index):
        parent = path.rpartition(".")[0]
        stages.setdefault(parent, []).append(path)
    if not stages:
        raise RecipeError(
            f"{type(root).__name__} calls no submodule with submodules of its own: name the "
            "module paths to align (align_paths)"
        )
    sequence = max(stages.values(), key=len)
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
    ``recipe.b`` with ``recipe.activations`` (``recipe.model == "bcos-scratch"``: then
    re-initialised). The loss sums ``1 - cosine`` between the student's and the original's
    features at ``recipe.align_paths`` (empty: ``recipe.align_depths`` paths picked by
    :func:`alignment_paths`, recorded in the run's ``recipe.json``) and the output term
    (``recipe.loss``, or ``loss``) on the outputs: logits less the logit bias, or embeddings.
    Writes what :func:`bcosify.train.train` writes (the student in ``model/``; a B-cos CLIP in
    ``clip/``) and ``distillation.json`` (the loss and paths; a run resumes only with the same).

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
        ...                                  image_size=32), progress=False)
        >>> result.config.paths, result.train.step
        (('layer2', 'layer3', 'layer4'), 2)
    """
    recipe = recipe or get_recipe("bcosify-align")
    if recipe.model not in ("bcosify", "bcos-scratch"):
        raise RecipeError(
            f"alignment trains a B-cos student: recipe.model must be 'bcosify' (from the "
            f"pretrained weights) or 'bcos-scratch' (from random weights), got {recipe.model!r}"
        )
    output = (
        loss if isinstance(loss, DistillationConfig) else DistillationConfig(loss or recipe.loss)
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
    config = AlignmentConfig(paths, output)
    bias = getattr(student.logit_bias, "bias", None) if hasattr(student, "logit_bias") else None
    objective = Alignment(
        teacher, config, *roots, output_offset=float(bias) if bias is not None else 0.0
    )
    try:
        with hold_run_folder(out, dist):  # the whole run, train's own hold included
            _check_resumable(out, config, train_options.get("resume", True))
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
    if result.finished and dist.is_main:
        clip.save_pretrained(out / CLIP_RUN_DIR)
    return DistillationResult(clip, result, config)


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
