"""Evaluation: accuracy (zero-shot for CLIP), and how well explanations localise and how
faithful they are.

Explainers (:func:`build_explainer`, one registry for images and texts) put the model's own
B-cos explanation and post-hoc baselines behind one interface; the metrics take any of them.
Nothing else in bcosify imports this package except the command line.
"""

from .colour import ColourFidelity, colour_fidelity, colour_fidelity_of_model
from .explainers import (
    EXPLAINER_NAMES,
    TEXT_EXPLAINER_NAMES,
    Explainer,
    TextExplainer,
    build_explainer,
    build_text_explainer,
    gradcam_layer,
)
from .metrics import (
    PointingGameResult,
    accuracy,
    correct,
    deletion_auc,
    deletion_curves,
    grid_pointing_game,
    make_grids,
    mask_localisation,
    pointing_game_scores,
)
from .probe import LinearProbeResult, linear_probe, penultimate_features
from .quantus import quantus_explain
from .statistics import Interval, bootstrap_interval
from .zero_shot import (
    DEFAULT_TEMPLATES,
    ZeroShotResult,
    class_embeddings,
    zero_shot_accuracy,
    zero_shot_evaluation,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "EXPLAINER_NAMES",
    "TEXT_EXPLAINER_NAMES",
    "ColourFidelity",
    "Explainer",
    "Interval",
    "LinearProbeResult",
    "PointingGameResult",
    "TextExplainer",
    "ZeroShotResult",
    "accuracy",
    "bootstrap_interval",
    "build_explainer",
    "build_text_explainer",
    "class_embeddings",
    "colour_fidelity",
    "colour_fidelity_of_model",
    "correct",
    "deletion_auc",
    "deletion_curves",
    "gradcam_layer",
    "grid_pointing_game",
    "linear_probe",
    "make_grids",
    "mask_localisation",
    "penultimate_features",
    "pointing_game_scores",
    "quantus_explain",
    "zero_shot_accuracy",
    "zero_shot_evaluation",
]
