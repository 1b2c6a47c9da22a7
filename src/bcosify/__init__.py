"""bcosify: turn pretrained networks into inherently interpretable B-cos networks.

The most used names are available at the top level::

    import bcosify
    with bcosify.explanation_mode(model): ...
    explanation = bcosify.explain(model, images, target=labels)
"""

from . import nn
from .errors import BcosifyError, ExplanationError
from .explain import BcosAttribution, Explanation, explain
from .nn import explanation_mode

__version__ = "0.1.0"

__all__ = [
    "BcosAttribution",
    "BcosifyError",
    "Explanation",
    "ExplanationError",
    "__version__",
    "explain",
    "explanation_mode",
    "nn",
]
