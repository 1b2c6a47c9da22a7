"""Explanations of B-cos models: batched, exact, and pictures of them.

The package is callable: ``bcosify.explain(model, images)`` is :func:`bcosify.explain.explain`.
"""

from .core import BcosAttribution, Explanation, Target, explain
from .targets import cosine_similarity_target
from .visualize import (
    colour_explanation,
    contribution_map_image,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
    save_image,
)

__all__ = [
    "BcosAttribution",
    "Explanation",
    "Target",
    "colour_explanation",
    "contribution_map_image",
    "cosine_similarity_target",
    "explain",
    "explanation_figure",
    "save_colour_explanation",
    "save_contribution_map",
    "save_image",
]

from .._callable import make_callable

make_callable(__name__, explain)
