"""Fine-tuning: recipes as data, a resumable training loop, DDP under torchrun."""

from .checkpoint import load_checkpoint, save_checkpoint
from .distill import (
    Alignment,
    AlignmentConfig,
    Distillation,
    DistillationConfig,
    DistillationResult,
    align,
    alignment_paths,
    distill,
)
from .loop import Objective, TrainResult, train
from .losses import classification_loss, uniform_off_label_targets
from .prepare import Normalized, prepare_model
from .recipes import DISTILLATION_LOSSES, RECIPES, Recipe, RecipeError, get_recipe
from .validation import validate

__all__ = [
    "DISTILLATION_LOSSES",
    "RECIPES",
    "Alignment",
    "AlignmentConfig",
    "Distillation",
    "DistillationConfig",
    "DistillationResult",
    "Normalized",
    "Objective",
    "Recipe",
    "RecipeError",
    "TrainResult",
    "align",
    "alignment_paths",
    "classification_loss",
    "distill",
    "get_recipe",
    "load_checkpoint",
    "prepare_model",
    "save_checkpoint",
    "train",
    "uniform_off_label_targets",
    "validate",
]
