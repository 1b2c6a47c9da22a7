"""Exception types of bcosify. Every error says what was wrong and what to do about it."""

from __future__ import annotations

__all__ = ["BcosifyError", "ExplanationError"]


class BcosifyError(Exception):
    """Base class of every error bcosify raises on purpose."""


class ExplanationError(BcosifyError, ValueError):
    """An explanation was requested with inputs or targets that do not fit the model."""
