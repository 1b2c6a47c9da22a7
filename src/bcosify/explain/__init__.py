"""Explanations of B-cos models: batched, exact, and pictures of them.

The package is callable: ``bcosify.explain(model, images)`` is :func:`bcosify.explain.explain`.
"""

from typing import Any

from .core import Explanation, Target, explain
from .targets import cosine_similarity_target
from .text import TextExplanation, TokenExplanation, explain_text, explain_tokens, token_html
from .visualize import (
    colour_explanation,
    composite,
    contribution_map_image,
    explanation_colours,
    explanation_figure,
    save_colour_explanation,
    save_contribution_map,
    save_figure,
    save_image,
)

__all__ = [
    "BcosAttribution",
    "Explanation",
    "Target",
    "TextExplanation",
    "TokenExplanation",
    "colour_explanation",
    "composite",
    "contribution_map_image",
    "cosine_similarity_target",
    "explain",
    "explain_text",
    "explain_tokens",
    "explanation_colours",
    "explanation_figure",
    "save_colour_explanation",
    "save_contribution_map",
    "save_figure",
    "save_image",
    "token_html",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, name)


def lazy_attribute(module: str, name: str) -> Any:
    """``module.name`` for the names imported on first use: :class:`BcosAttribution`, which
    subclasses Captum's base class, so that ``import bcosify`` does not import Captum."""
    if name == "BcosAttribution":
        from .attribution import BcosAttribution

        return BcosAttribution
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


from .._callable import make_callable  # noqa: E402

make_callable(__name__, explain)
