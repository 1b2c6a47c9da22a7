"""Fine-tuning: recipes as data, a resumable training loop, DDP under torchrun."""

from .checkpoint import load_checkpoint, save_checkpoint
from .distill import (
    Distillation,
    DistillationConfig,
    DistillationResult,
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
    "Distillation",
    "DistillationConfig",
    "DistillationResult",
    "Normalized",
    "Objective",
    "Recipe",
    "RecipeError",
    "TrainResult",
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
