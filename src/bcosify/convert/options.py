"""The options of a conversion, as data: validated once, saved with the model as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from ..errors import OptionsError
from ..nn.bcos import MAX_B, check_b
from ..schema import AnyOf, Boolean, FieldError, ListOf, Nullable, Number, Record, Text

__all__ = ["OPTION_FIELDS", "SHARED_OPTION_FIELDS", "ConversionOptions", "checked_options"]

Encoding = Literal["fold", "paper"]
MaxPool = Literal["keep", "avg"]
Activations = Literal["keep", "identity"]
QkvProjection = Literal["linear", "bcos"]


@dataclass(frozen=True)
class ConversionOptions:
    """Everything that decides what :func:`bcosify.convert` builds.

    The defaults are the published B-cosification recipe, with the exact ``"fold"`` encoding.

    Attributes:
        input_mean, input_std: the per-channel normalisation the original model was trained with
            (images in ``[0, 1]``); the converted model takes the unnormalised images.
        b: the B of every B-cos layer (1 gives the original linear layers).
        encoding: ``"fold"`` folds the normalisation into the first layer's weights for the
            ``[x, 1 - x]`` input, leaving no affine offset; ``"paper"`` keeps a normalisation
            layer in front, whose offset explanations report as a constant term.
        keep_bias: keep every bias (for checking equivalence with the original; the result is
            then not dynamic linear).
        maxpool: keep max pooling, or replace it by average pooling as the published code does.
        activations: keep the activations (dynamic-linear forms), or replace them by identities.
        classifier_before_pool: apply a linear classifier that directly follows global average
            pooling as a 1 x 1 convolution before the pooling, so contributions stay spatial;
            for a transformer that averages its tokens, apply the head (and a layer norm between
            the average and the head) to every token and average the results.
        qkv_projection: what the linear layers computing the queries, keys and values of
            attention become. ``"linear"`` (the published choice) keeps them plain linear layers
            (without bias unless ``keep_bias``): queries and keys are constants of the
            explanation anyway, and the values then enter linearly. ``"bcos"`` makes them B-cos
            layers like every other linear layer.
        logit_bias: ``"auto"`` adds ``-log(C - 1)`` to every logit unless ``keep_bias`` or the
            model is a CLIP image tower (its outputs are embeddings); a number adds that
            constant; None adds nothing.

    Example:
        >>> ConversionOptions(input_mean=(0.5, 0.5, 0.5), input_std=(0.25, 0.25, 0.25)).b
        2.0
    """

    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    b: float = 2.0
    encoding: Encoding = "fold"
    keep_bias: bool = False
    maxpool: MaxPool = "keep"
    activations: Activations = "keep"
    classifier_before_pool: bool = True
    logit_bias: float | Literal["auto"] | None = "auto"
    qkv_projection: QkvProjection = "linear"

    def __post_init__(self) -> None:
        try:
            mean, std = tuple(map(float, self.input_mean)), tuple(map(float, self.input_std))
        except (TypeError, ValueError):
            raise OptionsError(
                "input_mean and input_std must be sequences of numbers, one per input channel, "
                f"got {self.input_mean!r} and {self.input_std!r}"
            ) from None
        object.__setattr__(self, "input_mean", mean)
        object.__setattr__(self, "input_std", std)
        object.__setattr__(self, "b", check_b(self.b, OptionsError))
        for name in ("keep_bias", "classifier_before_pool"):
            if not isinstance(getattr(self, name), bool):
                raise OptionsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if len(mean) != len(std) or not mean:
            raise OptionsError(
                f"input_mean and input_std need one value per input channel, got {mean} and {std}"
            )
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise OptionsError(
                f"input_mean must be finite and input_std positive and finite, got {mean} and {std}"
            )
        check_shared_options(self.b, self.activations, self.qkv_projection, self.logit_bias)
        _check_choice("encoding", self.encoding, ("fold", "paper"))
        _check_choice("maxpool", self.maxpool, ("keep", "avg"))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` reads it back."""
        data = asdict(self)
        data["input_mean"], data["input_std"] = list(self.input_mean), list(self.input_std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionOptions:
        """Rebuild options from :meth:`to_dict`; every field is checked (:data:`OPTION_FIELDS`)
        and unknown keys are an error, not ignored.

        Example:
            >>> options = ConversionOptions((0.5,), (0.5,), b=2.5)
            >>> ConversionOptions.from_dict(options.to_dict()) == options
            True
        """
        return cls(**checked_options(OPTION_FIELDS, data, cls))


def checked_options(schema: Record, data: Any, cls: type) -> dict[str, Any]:
    """``data`` checked against ``schema``: an :class:`OptionsError` naming ``cls``'s fields."""
    try:
        return schema.check(data, "options")
    except FieldError as error:
        known = ", ".join(f.name for f in fields(cls))
        raise OptionsError(f"{error} (conversion options: {known})") from None


_CHANNEL_VALUES = ListOf(Number(-100.0, 100.0), 1, 16)
_LOGIT_BIAS = Nullable(AnyOf(Text(choices=("auto",)), Number(-1e4, 1e4)))
SHARED_OPTION_FIELDS = {
    "b": Number(1.0, MAX_B),
    "keep_bias": Boolean(),
    "activations": Text(choices=("keep", "identity")),
    "qkv_projection": Text(choices=("linear", "bcos")),
    "logit_bias": _LOGIT_BIAS,
}
OPTION_FIELDS = Record(
    {
        **SHARED_OPTION_FIELDS,
        "input_mean": _CHANNEL_VALUES,
        "input_std": ListOf(Number(0.0, 100.0, positive=True), 1, 16),
        "encoding": Text(choices=("fold", "paper")),
        "maxpool": Text(choices=("keep", "avg")),
        "classifier_before_pool": Boolean(),
    },
    required=("input_mean", "input_std"),
)
"""What a saved config's ``options`` may hold: every field typed and bounded."""


def check_shared_options(b: float, activations: str, qkv_projection: str, logit_bias: Any) -> None:
    """The checks of the options image and text conversions share.

    Example:
        >>> check_shared_options(0.5, "keep", "linear", "auto")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bcosify.errors.OptionsError: b must be a number from 1 to 10 (...), got 0.5
    """
    check_b(b, OptionsError)
    _check_choice("activations", activations, ("keep", "identity"))
    _check_choice("qkv_projection", qkv_projection, ("linear", "bcos"))
    if not (logit_bias in ("auto", None) or _finite_number(logit_bias)):
        raise OptionsError(
            f"logit_bias must be 'auto', a finite number or None, got {logit_bias!r}"
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionsError(f"{name} must be one of {choices}, got {value!r}")
