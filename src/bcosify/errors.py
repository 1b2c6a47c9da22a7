"""Exception types of bcosify. Every error says what was wrong and what to do about it."""

from __future__ import annotations

__all__ = [
    "BcosifyError",
    "CheckpointError",
    "ConversionError",
    "DataError",
    "EvaluationError",
    "ExplanationError",
    "InputRangeError",
    "ModelSourceError",
]


class BcosifyError(Exception):
    """Base class of every error bcosify raises on purpose."""


class ExplanationError(BcosifyError, ValueError):
    """An explanation was requested with inputs or targets that do not fit the model."""


class DataError(BcosifyError, ValueError):
    """A dataset could not be built or read: a missing folder, a bad layout, an unreadable image."""


class ConversionError(BcosifyError, ValueError):
    """A model has parts without a dynamic-linear (B-cos) form; the message lists every one."""


class ModelSourceError(BcosifyError, ValueError):
    """A model source name, its weights or a weights file does not fit the architecture."""


class CheckpointError(BcosifyError, ValueError):
    """A saved model or checkpoint is missing, incomplete or of another architecture."""


class EvaluationError(BcosifyError, ValueError):
    """An explainer or metric cannot run on the given model, data or options."""


class InputRangeError(BcosifyError, ValueError):
    """A B-cos model was given images that are not RGB in ``[0, 1]`` (normalised, or 0-255)."""
