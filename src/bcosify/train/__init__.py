"""Fine-tuning: recipes as data, a resumable training loop, DDP under torchrun."""

from .checkpoint import load_checkpoint, save_checkpoint
from .loop import TrainResult, train
from .losses import classification_loss, uniform_off_label_targets
from .prepare import Normalized, prepare_model
from .recipes import RECIPES, Recipe, RecipeError, get_recipe
from .validation import validate

__all__ = [
    "RECIPES",
    "Normalized",
    "Recipe",
    "RecipeError",
    "TrainResult",
    "classification_loss",
    "get_recipe",
    "load_checkpoint",
    "prepare_model",
    "save_checkpoint",
    "train",
    "uniform_off_label_targets",
    "validate",
]
