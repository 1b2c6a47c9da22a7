"""Distilling a B-cosified CLIP image tower from the original (RECIPE 8).

The student is the converted image tower (starting from the pretrained weights, or from random
weights for comparison), the teacher the frozen original tower; the loss compares their
L2-normalised embeddings of the same images: ``"cosine"`` (one minus the cosine similarity)
or ``"siglip"`` (SigLIP's pairwise sigmoid loss over the batch, every student embedding against
every teacher embedding, with scale 10 and bias -10). Labels are not used: any folder of images
is data (:class:`~bcosify.data.UnlabelledImages`). The fine-tuning engine
(:func:`bcosify.train.train`) runs it, so runs resume exactly and scale to DDP.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..convert.clip import BcosCLIP, convert_clip
from ..device import device_of
from ..errors import CheckpointError
from ..serialization import atomic_write
from .distributed import Distributed, setup_distributed
from .loading import build_loader
from .loop import TrainResult, train
from .recipes import Recipe, RecipeError, get_recipe
from .run_folder import hold_run_folder

__all__ = [
    "CLIP_RUN_DIR",
    "SIGLIP_BIAS",
    "SIGLIP_SCALE",
    "Distillation",
    "DistillationConfig",
    "DistillationResult",
    "cosine_distillation_loss",
    "distill",
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


class Distillation(nn.Module):
    """The training objective: the student's embeddings against the frozen teacher's.

    ``teacher`` maps images in ``[0, 1]`` to embeddings (for a :class:`BcosCLIP`, its
    ``original``); it runs without gradients in evaluation mode. An
    :class:`~bcosify.train.loop.Objective` for :func:`bcosify.train.train`.

    Example:
        >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        >>> objective = Distillation(teacher, DistillationConfig("cosine"))
        >>> images = torch.rand(2, 3, 2, 2)
        >>> float(objective(teacher(images), images, torch.zeros(2))) < 1e-6
        True
    """

    def __init__(self, teacher: nn.Module, config: DistillationConfig) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config

    def forward(self, outputs: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.teacher(images).float()
        return self.config(outputs.float(), target)

    @torch.no_grad()
    def validate(
        self, model: nn.Module, data: Dataset, *, batch_size: int, dist: Distributed
    ) -> dict[str, Any]:
        """``val_loss`` (the distillation loss per batch, averaged) and ``val_cosine`` (the mean
        cosine similarity of student and teacher embeddings), over all processes."""
        was_training = model.training
        model.eval()
        loss = cosine = batches = count = 0.0
        loader = build_loader(
            data, batch_size=batch_size, seed=0, epoch=0, rank=dist.rank, world=dist.world,
            train=False,
        )  # fmt: skip
        device = device_of(model)
        try:
            for batch in loader:
                images = batch[0].to(device)
                student, teacher = model(images).float(), self.teacher(images).float()
                loss += float(self.config(student, teacher))
                cosine += float(F.cosine_similarity(student, teacher, dim=-1).sum())
                batches += 1
                count += len(images)
        finally:
            model.train(was_training)
        loss, cosine, batches, count = dist.sum([loss, cosine, batches, count])
        return {"val_loss": loss / max(batches, 1), "val_cosine": cosine / max(count, 1)}


@dataclass
class DistillationResult:
    """What :func:`distill` did: the B-cos CLIP (its tower trained) and the training result."""

    model: BcosCLIP
    train: TrainResult


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
    :func:`~bcosify.convert.load_clip`). A run resumes only with the same loss.

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
    if recipe.model not in ("bcosify", "bcos-scratch"):
        raise RecipeError(
            f"distillation trains a B-cos student: recipe.model must be 'bcosify' (from the "
            f"pretrained weights) or 'bcos-scratch' (from random weights), got {recipe.model!r}"
        )
    config = (
        loss if isinstance(loss, DistillationConfig) else DistillationConfig(loss or recipe.loss)
    )
    recipe = replace(recipe, loss=config.loss)  # recipe.json records the loss trained with
    out = Path(out_dir)
    dist = setup_distributed(train_options.get("device"))
    if isinstance(model, BcosCLIP):
        clip = model
    else:
        clip = convert_clip(
            model, tokenizer=tokenizer, b=recipe.b, activations=recipe.activations
        ).model
    with hold_run_folder(out, dist):  # the whole run, train's own hold included
        _check_resumable(out, config, train_options.get("resume", True))
        if dist.is_main:
            text = json.dumps(config.to_dict(), indent=2) + "\n"
            atomic_write(out / CONFIG_FILE, lambda path: path.write_text(text))
        objective = Distillation(clip.original, config)
        result = train(
            clip.visual, train_data, recipe, out, val_data=val_data, objective=objective,
            **train_options,
        )  # fmt: skip
        clip.visual = result.model
        if result.finished and dist.is_main:
            clip.save_pretrained(out / CLIP_RUN_DIR)
    return DistillationResult(clip, result)


def _check_resumable(out: Path, config: DistillationConfig, resume: bool) -> None:
    path = out / CONFIG_FILE
    if not resume or not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(path)!r} cannot be read ({error}); delete it") from None
    if saved != config.to_dict():
        raise CheckpointError(
            f"{str(out)!r} holds a distillation with another loss ({saved}); resume it with the "
            "same loss, or choose another output folder"
        )
