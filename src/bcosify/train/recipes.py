"""Training recipes as data: named presets, overridable field by field, saved as JSON."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from ..errors import UsageError
from ..nn.bcos import check_b

__all__ = ["DISTILLATION_LOSSES", "RECIPES", "Recipe", "RecipeError", "get_recipe"]

# losses of a student's embeddings against a frozen teacher's, run by bcosify.train.distill
DISTILLATION_LOSSES = ("cosine", "siglip", "kl")


class RecipeError(UsageError):
    """An unknown recipe name, an unknown field or a bad value."""


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how a model is trained.

    Attributes:
        name: the preset this recipe started from.
        model: what is trained: ``"original"`` (the model as given), ``"bcosify"`` (the model
            converted to B-cos first, keeping its weights) or ``"bcos-scratch"`` (converted,
            then re-initialised: a B-cos model from random weights).
        loss: ``"ce"`` (cross-entropy) or ``"bce"`` (binary cross-entropy on one-hot targets
            whose off-labels are raised to ``1 / C``, the B-cos recipe); for distilling a
            CLIP image tower from its original (:func:`bcosify.train.distill`), ``"cosine"``
            or ``"siglip"`` on the L2-normalised image embeddings.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (momentum 0.9).
        lr, weight_decay: learning rate and weight decay.
        epochs, batch_size: the budget; ``batch_size`` is the global batch over all processes.
        epoch_size: examples per epoch, each drawn at random from the data (with replacement,
            seeded); 0 is one pass over the data. With a positive size the number of steps does
            not depend on how many images the data holds.
        time_budget: seconds of training (steps, validation and the written model) after which
            the run ends, finished, with its model written; None for no limit (``epochs`` is
            then the budget, and it stays a cap). The time spent is kept in the checkpoint, so
            a resumed run spends what is left. The learning-rate schedule then follows the
            fraction of the budget spent, so such a run is not reproducible step for step.
        warmup_steps: linear warm-up from 0, before the schedule.
        schedule: ``"cosine"`` (to 0 over all steps) or ``"constant"``.
        agc_clip: adaptive gradient clipping factor (unit-wise, relative to the weight norm);
            None turns it off.
        b: the B of the B-cos layers; ``b_ramp_steps > 0`` ramps it linearly from 1.
        keep_bias: the B-cos recipes keep the original's biases (of its layers and norms);
            explanations report each as a named constant term, so they stay exact.
        norms: ``"batch"`` (batch norms train on batch statistics, as usual) or ``"frozen"``
            (they keep their running statistics while training, as fitted to the original by
            ``align_calibration``; their scale and bias still train). A converted norm with a
            kept bias matches the original only with the statistics it was fitted with.
        activations: for the B-cos recipes, keep the model's activations in their dynamic-linear
            forms (``"keep"``, what B-cosification does) or replace them by identities
            (``"identity"``: the B-cos v2 design for models trained from scratch, whose
            non-linearity is the B-cos transform itself; with ReLUs kept, a B-cos model from
            random weights barely moves from chance in a short budget).
        maxpool: for the B-cos recipes, keep max pooling (``"keep"``: it is dynamic linear as
            it is) or convert it to average pooling (``"avg"``, what the published
            B-cosification code does; :func:`bcosify.convert`'s ``maxpool``). A max pool routes
            each window's explanation through one pixel, so the maps come out speckled.
        ema_decay: keep an exponential moving average of the weights (evaluated and saved
            instead of the raw weights); None turns it off.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast (fp16 with a gradient scaler).
        grad_accumulation: micro-batches per optimizer step (must divide the per-process batch).
        image_size: training and evaluation image size.
        augment: ``"standard"`` (random resized crop and flip) or ``"none"``, for the training
            images of a folder that ``bcosify train`` reads (a dataset passed to
            :func:`bcosify.train.train` brings its own transform).
        seed: seeds data order, augmentation and every random operation.
        checkpoint_every: steps between checkpoints (besides every epoch end).
        checkpoint_minutes: when set, a checkpoint (at ``checkpoint_every`` or an epoch end) is
            skipped unless this many minutes passed since the last one; the run's end always
            writes one.
        num_workers: data-loading processes.
        align_paths: for the alignment recipes (:func:`bcosify.train.align`), the module paths
            of the original whose features the student is aligned to, besides the output.
        align_depths: when ``align_paths`` is empty, how many paths :func:`bcosify.train.align`
            picks, spread over the depth of the network (it then records them in
            ``align_paths``); 0 aligns the output only (CLIP distillation).
        align_features: how the features at ``align_paths`` are compared: ``"cosine"``
            (``1 - cosine`` along the channels, as ALOE does) or ``"mse"`` (squared error
            relative to the original's, which keeps their scale).
        align_forcing: the fraction of the run during which the aligned modules take the
            original's inputs (teacher forcing, see :class:`bcosify.train.AlignmentConfig`);
            0 turns it off.
        temperature: of the ``"kl"`` loss on the logits.
        align_calibration: for :func:`bcosify.train.align`, how many training images the
            converted student is fitted to the original on before the first step, in closed
            form (``align_start``); 0: none.
        align_start: what that fit changes: ``"norms"``, the batch norms' statistics
            (:func:`bcosify.calibrate` with ``method="original"``), ``"layers"``, the
            weights of every B-cos layer, reconstructed layer by layer
            (``method="layers"``), or ``"blocks"``, those layers and then every block trained
            to reproduce the original's (``method="blocks"``).
        align_block_steps: for ``align_start="blocks"``: the Adam steps per block.
    """

    name: str
    model: Literal["original", "bcosify", "bcos-scratch"] = "original"
    loss: Literal["ce", "bce", "cosine", "siglip"] = "ce"
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    epochs: int = 10
    batch_size: int = 64
    epoch_size: int = 0
    time_budget: float | None = None
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    agc_clip: float | None = None
    b: float = 2.0
    b_ramp_steps: int = 0
    keep_bias: bool = False
    norms: Literal["batch", "frozen"] = "batch"
    activations: Literal["keep", "identity"] = "keep"
    maxpool: Literal["keep", "avg"] = "keep"
    ema_decay: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accumulation: int = 1
    image_size: int = 64
    augment: Literal["standard", "none"] = "standard"
    seed: int = 0
    checkpoint_every: int = 500
    checkpoint_minutes: float | None = None
    num_workers: int = 0
    align_paths: tuple[str, ...] = ()
    align_depths: int = 0
    align_features: Literal["cosine", "mse"] = "cosine"
    align_forcing: float = 0.0
    temperature: float = 2.0
    align_calibration: int = 0
    align_start: Literal["norms", "layers", "blocks"] = "norms"
    align_block_steps: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.align_paths, str) or not all(
            isinstance(p, str) for p in self.align_paths
        ):
            raise RecipeError(
                f"align_paths must be a list of module paths, got {self.align_paths!r}"
            )
        object.__setattr__(self, "align_paths", tuple(self.align_paths))  # from JSON: a list
        self._check_types()
        choices = {
            "model": ("original", "bcosify", "bcos-scratch"),
            "loss": ("ce", "bce", *DISTILLATION_LOSSES),
            "optimizer": ("adamw", "adam", "sgd"),
            "schedule": ("cosine", "constant"),
            "precision": ("fp32", "bf16", "fp16"),
            "augment": ("standard", "none"),
            "activations": ("keep", "identity"),
            "maxpool": ("keep", "avg"),
            "align_features": ("cosine", "mse"),
            "norms": ("batch", "frozen"),
            "align_start": ("norms", "layers", "blocks"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise RecipeError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = (
            "lr",
            "epochs",
            "batch_size",
            "grad_accumulation",
            "image_size",
            "checkpoint_every",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise RecipeError(f"{name} must be positive, got {getattr(self, name)!r}")
        nonnegative = (
            "weight_decay",
            "warmup_steps",
            "b_ramp_steps",
            "num_workers",
            "seed",
            "align_depths",
            "epoch_size",
            "align_calibration",
            "align_block_steps",
        )
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise RecipeError(f"{name} must be zero or more, got {getattr(self, name)!r}")
        if self.agc_clip is not None and not self.agc_clip > 0:
            raise RecipeError(
                f"agc_clip must be positive (or None to turn it off), got {self.agc_clip}"
            )
        for name in ("time_budget", "checkpoint_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise RecipeError(f"{name} must be positive (or None for none), got {value}")
        if not isinstance(self.keep_bias, bool):
            raise RecipeError(f"keep_bias must be true or false, got {self.keep_bias!r}")
        if not 0.0 <= self.align_forcing <= 1.0:
            raise RecipeError(f"align_forcing must be in [0, 1], got {self.align_forcing}")
        if not self.temperature > 0:
            raise RecipeError(f"temperature must be positive, got {self.temperature}")
        check_b(self.b, RecipeError)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise RecipeError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def _check_types(self) -> None:
        """Every field has its annotated type: whole numbers for counts, finite numbers for
        rates (an int is taken as a float), strings for choices; None only where allowed."""
        for name, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            allowed = typing.get_args(hint) if _is_union(hint) else (hint,)
            if value is None and type(None) in allowed:
                continue
            if float in allowed:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise RecipeError(f"{name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise RecipeError(f"{name} must be a finite number, got {value!r}")
                object.__setattr__(self, name, float(value))
            elif int in allowed and (isinstance(value, bool) or not isinstance(value, int)):
                raise RecipeError(f"{name} must be a whole number, got {value!r}")
            elif (typing.get_origin(hint) is Literal or hint is str) and not isinstance(value, str):
                raise RecipeError(f"{name} must be a string, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Rebuild a recipe from :meth:`to_dict`; unknown fields are an error.

        Example:
            >>> Recipe.from_dict(get_recipe("bcosify-cnn").to_dict()) == get_recipe("bcosify-cnn")
            True
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown recipe fields {unknown}; known: {sorted(known)}")
        return cls(**data)


RECIPES: dict[str, Recipe] = {
    # an ordinary model with cross-entropy: how the demo makes its "pretrained" model
    "standard": Recipe(
        "standard",
        model="original",
        loss="ce",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        epochs=10,
        batch_size=64,
    ),
    # the published B-cosification recipe for CNNs (RECIPE 5)
    "bcosify-cnn": Recipe(
        "bcosify-cnn",
        model="bcosify",
        loss="bce",
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        epochs=90,
        batch_size=256,
        agc_clip=0.01,
        image_size=224,
    ),
    # the published recipe for ViTs: Adam, per-step cosine with linear warm-up
    "bcosify-vit": Recipe(
        "bcosify-vit",
        model="bcosify",
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        epochs=90,
        batch_size=256,
        warmup_steps=10_000,
        image_size=224,
    ),
    # a B-cos model trained from random weights: the comparison the paper makes
    "bcos-scratch": Recipe(
        "bcos-scratch",
        model="bcos-scratch",
        loss="bce",
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        epochs=90,
        batch_size=256,
        agc_clip=0.01,
        activations="identity",
        image_size=224,
    ),
    # the published B-cos LM setting (RECIPE 10, Wang et al., TMLR 2025): conversion and task
    # fine-tuning of a text classifier in one step, BCE, AdamW at 2e-5, a linear warm-up over
    # 10% of the run; a recipe counts warm-up in steps, so 630 is 10% of 3 epochs of an
    # SST-2-sized set (67k texts) at batch 32: set warmup_steps for other sizes
    "bcosify-lm": Recipe(
        "bcosify-lm",
        model="bcosify",
        loss="bce",
        optimizer="adamw",
        lr=2e-5,
        weight_decay=0.0,
        epochs=3,
        batch_size=32,
        warmup_steps=630,
    ),
    # distilling a B-cosified CLIP image tower from the frozen original (RECIPE 8); RECIPE 8
    # gives no hyper-parameters, so these are the CNN recipe's
    "bcosify-clip": Recipe(
        "bcosify-clip",
        model="bcosify",
        loss="cosine",
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        epochs=30,
        batch_size=256,
        image_size=224,
    ),
    # label-free B-cosification as ALOE does it (RECIPE 9): the student aligned to the frozen
    # original by (1 - cosine) on features at three depths and on the output, no labels read;
    # the CNN recipe's optimiser. Also the recipe for CLIP towers with features.
    "bcosify-aloe": Recipe(
        "bcosify-aloe",
        model="bcosify",
        loss="cosine",
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        epochs=30,
        batch_size=256,
        image_size=224,
        align_depths=3,
    ),
    # post-training B-cosification of a classifier (RECIPE 11), measured on a real ImageNet
    # network (benchmarks/bench_real.py, docs/post-training.md): biases kept as named constants
    # and a small B (at B = 2, or without biases, nothing of the original survived a CPU
    # budget); every B-cos layer first reconstructed from the original's in closed form on 64
    # crops (47% agreement at B = 1.25 in 4 minutes, where fitted norms keep 34%), the norms
    # then frozen; KL at temperature 2 on the logits plus the relative squared error of every
    # stage's features, at a small learning rate. B = 1.05: 82 to 85% agreement in 20 minutes
    # (3 seeds), where B = 1.1 kept 72 to 74% and B = 1.25 42%: the smallest B measured, the
    # closest to the original's own explanation (docs/post-training.md says what that costs).
    # Short steps of random crops, independent of the folder's size.
    "bcosify-align": Recipe(
        "bcosify-align",
        model="bcosify",
        loss="kl",
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        epochs=30,
        epoch_size=256,
        batch_size=16,
        image_size=160,
        b=1.05,
        keep_bias=True,
        norms="frozen",
        align_depths=64,
        align_features="mse",
        align_calibration=64,
        align_start="layers",
        temperature=2.0,
        checkpoint_minutes=3.0,
    ),
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A preset by name, with fields overridden.

    Example:
        >>> get_recipe("bcosify-cnn", epochs=3).epochs
        3
    """
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise RecipeError(f"unknown recipe fields {unknown}; known: {sorted(known)}")
    return replace(RECIPES[name], **overrides)
