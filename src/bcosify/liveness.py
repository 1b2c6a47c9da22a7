"""Is a model alive: do its outputs depend on its input?

A B-cos network whose layers shrink the signal (a fresh conversion at B = 2 whose batch-norm
statistics were not recalibrated, a run stopped too early) outputs its constants, the logit
bias, and nothing else: every prediction is the same class and every explanation is a map of
contributions near zero. That is never silent: :func:`warn_if_constant` warns with a
:class:`~bcosify.errors.ConstantOutputWarning` that says what to do, and training,
evaluation and explanations call it on the outputs they see.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from .errors import ConstantOutputWarning

__all__ = ["SPREAD_TOLERANCE", "output_spread", "warn_if_constant"]

SPREAD_TOLERANCE = 1e-3
"""The smallest spread of an output across inputs that counts as depending on the input.
Trained classifiers' logits spread by units; a network that outputs its logit bias, by 1e-4
or less."""

ADVICE = (
    "calibrate the converted model (bcosify.calibrate, or --calibrate N), fine-tune it longer, "
    "and check that the original model works on the same data"
)


def output_spread(outputs: Tensor) -> float:
    """How much a batch of outputs ``(N, ...)`` varies with the input: the largest standard
    deviation across the batch of any output unit (NaN for fewer than two examples).

    Example:
        >>> import torch
        >>> output_spread(torch.tensor([[1.0, 2.0], [1.0, 4.0]]))
        1.4142...
    """
    if outputs.shape[0] < 2:
        return float("nan")
    flat = outputs.detach().double().flatten(1)
    return float(flat.std(0).max())


def warn_if_constant(outputs: Tensor, what: str, stacklevel: int = 2) -> bool:
    """Warn when ``outputs`` (a batch of at least two examples) barely depend on the input:
    their :func:`output_spread` is below :data:`SPREAD_TOLERANCE`. Returns whether it warned.

    Example:
        >>> import torch
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_if_constant(torch.full((4, 3), -2.3), "the model")
        True
        >>> str(caught[0].message).split(":")[0]
        "the model's outputs do not depend on its input"
    """
    spread = output_spread(outputs)
    if not spread < SPREAD_TOLERANCE:  # NaN: too few examples to tell
        return False
    warnings.warn(
        f"{what}'s outputs do not depend on its input: they vary by at most {spread:.1e} across "
        f"{outputs.shape[0]} inputs (every output is the model's constants, such as its logit "
        f"bias); {ADVICE}",
        ConstantOutputWarning,
        stacklevel=stacklevel + 1,
    )
    return True
