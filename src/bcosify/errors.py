"""Exception and warning types of bcosify. Every error says what was wrong and what to do.

On the command line every :class:`BcosifyError` is printed as one line and the command exits
with the error's :attr:`~BcosifyError.exit_status`: 2 for a :class:`UsageError` (the command
line asks for something invalid), 1 for everything else (the run could not go on).
"""

from __future__ import annotations

__all__ = [
    "BcosifyError",
    "CheckpointError",
    "ConstantOutputWarning",
    "ConversionError",
    "DataError",
    "DivergenceError",
    "EvaluationError",
    "ExplanationError",
    "InexactExplanationWarning",
    "InputRangeError",
    "ModelSourceError",
    "OptionsError",
    "RunFolderBusyError",
    "StorageError",
    "UsageError",
]


class BcosifyError(Exception):
    """Base class of every error bcosify raises on purpose."""

    exit_status = 1
    """The command line's exit status for this error: 1, the run could not go on."""


class UsageError(BcosifyError, ValueError):
    """An option, argument or setting has an invalid value, or options contradict each other."""

    exit_status = 2


class OptionsError(UsageError):
    """Conversion options with an invalid value (:class:`bcosify.convert.ConversionOptions`)."""


class ModelSourceError(UsageError):
    """A model source name, its weights or a weights file does not fit the architecture."""


class ExplanationError(BcosifyError, ValueError):
    """An explanation was requested with inputs or targets that do not fit the model."""


class DataError(BcosifyError, ValueError):
    """A dataset could not be built or read: a missing folder, a bad layout, an unreadable image."""


class ConversionError(BcosifyError, ValueError):
    """A model has parts without a dynamic-linear (B-cos) form; the message lists every one."""


class CheckpointError(BcosifyError, ValueError):
    """A saved model or checkpoint is missing, incomplete or of another architecture."""


class EvaluationError(BcosifyError, ValueError):
    """An explainer or metric cannot run on the given model, data or options."""


class InputRangeError(BcosifyError, ValueError):
    """A B-cos model was given images that are not RGB in ``[0, 1]`` (normalised, or 0-255)."""


class DivergenceError(BcosifyError, FloatingPointError):
    """Training produced a non-finite loss or weights; nothing non-finite was saved."""


class RunFolderBusyError(BcosifyError):
    """Another process is training in the same run folder."""


class StorageError(BcosifyError, OSError):
    """A file could not be written (no space left, no permission); what was there is intact."""


class InexactExplanationWarning(UserWarning):
    """An explanation's contributions and constants do not sum to the explained score."""


class ConstantOutputWarning(UserWarning):
    """A model's outputs barely depend on its input: they are its constants (the logit bias)."""
