"""Explanations of B-cos models: batched, exact, and pictures of them.

The package is callable: ``bcosify.explain(model, images)`` is :func:`bcosify.explain.explain`.
"""

from typing import Any

from .core import Explanation, Target, explain
from .targets import cosine_similarity_target
from .text import TextExplanation, TokenExplanation, explain_text, explain_tokens, token_html
from .visualize import (
    colour_explanation,
    contribution_map_image,
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
    "contribution_map_image",
    "cosine_similarity_target",
    "explain",
    "explain_text",
    "explain_tokens",
    "explanation_figure",
    "save_colour_explanation",
    "save_contribution_map",
    "save_figure",
    "save_image",
    "token_html",
]


def __getattr__(name: str) -> Any:
    from .core import lazy_attribute  # BcosAttribution: imported on first use

    return lazy_attribute(__name__, name)


from .._callable import make_callable  # noqa: E402

make_callable(__name__, explain)
