"""A converted text classifier: token ids in, logits (with the logit bias) out; saved as
safetensors plus JSON."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from .._version import __version__
from ..errors import CheckpointError, OptionsError
from ..models.text import padding_mask
from ..models.transformers_config import TransformersConfig, build_config
from ..nn import LogitBias
from ..nn.bcos import check_b
from ..nn.dynamic_mode import DynamicLinearMode
from ..nn.mode import ExplanationAware
from ..schema import Boolean, Field, FieldError, Integer, Nullable, Record, Text, class_names
from ..serialization import CONFIG_FILE, read_checked_config, write_pretrained
from .hub import HubMixin
from .options import (
    SHARED_OPTION_FIELDS,
    Activations,
    QkvProjection,
    check_shared_options,
    checked_options,
)

__all__ = [
    "TEXT_CONFIG_FIELDS",
    "TEXT_FORMAT",
    "BcosTextModel",
    "TextConversionOptions",
    "TextModelConfig",
    "read_text_config",
]

TEXT_FORMAT = "bcosify-text-model/1"


@dataclass(frozen=True)
class TextConversionOptions:
    """What :func:`bcosify.convert` builds from a text classifier.

    The defaults are the published B-cos LM conversion (Wang et al., TMLR 2025): B = 2, no
    biases, the query/key/value projections plain linear layers, a logit bias.

    Attributes:
        b: the B of every B-cos layer (1 gives the original linear layers).
        keep_bias: keep every bias and the pooler's tanh (to check equivalence with the
            original; the result is then not dynamic linear).
        activations: keep the activations (dynamic-linear forms) or replace them by identities.
        qkv_projection: the query, key and value projections stay plain linear layers
            (``"linear"``) or become B-cos layers (``"bcos"``), as for images.
        logit_bias: ``"auto"`` adds ``-log(C - 1)`` to every logit unless ``keep_bias``; a
            number adds that constant; None adds nothing.

    Example:
        >>> TextConversionOptions(b=1.5).to_dict()["b"]
        1.5
    """

    b: float = 2.0
    keep_bias: bool = False
    activations: Activations = "keep"
    qkv_projection: QkvProjection = "linear"
    logit_bias: float | Literal["auto"] | None = "auto"
    # what the module-tree converter and the shared rules read, fixed for text models
    maxpool: ClassVar[str] = "keep"
    classifier_before_pool: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "b", check_b(self.b, OptionsError))
        if not isinstance(self.keep_bias, bool):
            raise OptionsError(f"keep_bias must be True or False, got {self.keep_bias!r}")
        check_shared_options(self.b, self.activations, self.qkv_projection, self.logit_bias)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConversionOptions:
        """Rebuild options from :meth:`to_dict`, every field checked."""
        return cls(**checked_options(Record(SHARED_OPTION_FIELDS), data, cls))


@dataclass
class TextModelConfig:
    """Everything needed to rebuild a converted text classifier, stored as ``config.json``.

    Attributes:
        options: the conversion options.
        architecture: the transformers class (``"BertForSequenceClassification"``).
        hf_config: the original's transformers config, as ``config.to_dict()`` gives it.
        class_names: the class names, when known.
        token_types: whether the model takes ``token_type_ids``.
        pad_token_id: the padding token, from which a missing attention mask is derived.
        own_code: the classifier runs its own forward, converted by module swaps and made
            dynamic linear at run time (:mod:`bcosify.convert.text_swaps`), rather than the
            forward on tensors of a family that knows it.
    """

    options: TextConversionOptions
    architecture: str
    hf_config: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    token_types: bool = False
    pad_token_id: int | None = None
    own_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TEXT_FORMAT,
            "bcosify_version": __version__,
            "architecture": self.architecture,
            "hf_config": self.hf_config,
            "class_names": self.class_names,
            "token_types": self.token_types,
            "pad_token_id": self.pad_token_id,
            "own_code": self.own_code,
            "options": self.options.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextModelConfig:
        """The config of a checked ``config.json`` (:func:`read_text_config`)."""
        return cls(
            options=TextConversionOptions(**data["options"]),
            architecture=data["architecture"],
            hf_config=data["hf_config"],
            class_names=data.get("class_names"),
            token_types=data.get("token_types", False),
            pad_token_id=data.get("pad_token_id"),
            own_code=data.get("own_code", False),
        )


def _architectures() -> dict[str, str]:
    """The text classifiers a saved model may name: transformers' sequence classifiers (class
    name -> model type). Building one from a checked config runs only the library's code; the
    conversion then converts it (the way the saved model records) or refuses it."""
    from ..models.transformers_config import sequence_classifiers

    return dict(sequence_classifiers())


TEXT_CONFIG_FIELDS: dict[str, Field] = {
    "architecture": Text(pattern=r"[A-Za-z0-9]+ForSequenceClassification"),
    "hf_config": TransformersConfig(lambda: _architectures().values()),
    "class_names": class_names(),
    "token_types": Boolean(),
    "pad_token_id": Nullable(Integer(0, 2**20)),
    "own_code": Boolean(),
    "options": Record(SHARED_OPTION_FIELDS),
}
"""What a saved text model's ``config.json`` may hold, besides its format and hash."""


class BcosTextModel(HubMixin, ExplanationAware, nn.Module):
    """A B-cos text classifier made by :func:`bcosify.convert` from a transformers sequence
    classifier: takes ``input_ids`` (and an ``attention_mask``), returns the logits.

    ``network`` is the original's own module tree, converted in place (``model.network.bert.
    encoder.layer[0].attention.self`` is still a ``BertSelfAttention``); ``forward`` runs it
    and adds the logit bias. Explain it token by token with :func:`bcosify.explain_text`:
    the token embedding's output is the explained input, the position and token-type
    embeddings and the logit bias are named constants, and the per-token contributions plus
    the constants equal the logit.

    A missing ``attention_mask`` is ``input_ids != pad_token_id`` when the model has a padding
    token (so a padded batch of ids is a complete input, as in training), else all ones.

    Example:
        >>> import torch, bcosify
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30, num_labels=3)
        >>> model, report = bcosify.convert(BertForSequenceClassification(config))
        >>> model(torch.tensor([[2, 5, 7, 0]])).shape
        torch.Size([1, 3])
        >>> type(model.network.bert.encoder.layer[0].attention.self).__name__
        'BcosBertSelfAttention'
    """

    _pipeline_tag = "text-classification"

    def __init__(
        self, network: nn.Module, config: TextModelConfig, logit_bias: float | None
    ) -> None:
        super().__init__()
        self.config = config
        self.network = network
        self.logit_bias: nn.Module = (
            LogitBias(logit_bias) if logit_bias is not None else nn.Identity()
        )

    @property
    def num_classes(self) -> int:
        """The number of logits."""
        return int(
            self.config.hf_config.get("num_labels") or len(self.config.hf_config["id2label"])
        )

    def default_mask(self, input_ids: Tensor) -> Tensor:
        """The attention mask of ``input_ids`` when none is given (:func:`~bcosify.models.
        text.padding_mask`)."""
        return padding_mask(input_ids, self.config.pad_token_id)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if input_ids.ndim != 2 or input_ids.is_floating_point():
            raise ValueError(
                f"expected token ids of shape (N, L), an integer tensor, got "
                f"{tuple(input_ids.shape)} of {input_ids.dtype}"
            )
        if attention_mask is None:
            attention_mask = self.default_mask(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"the attention mask {tuple(attention_mask.shape)} must have the shape of the "
                f"token ids {tuple(input_ids.shape)}"
            )
        if not self.config.token_types and token_type_ids is not None:
            raise ValueError(f"{self.config.architecture} takes no token_type_ids")
        if self.config.own_code:
            return self.logit_bias(self._own_code(input_ids, attention_mask, token_type_ids))
        if not self.config.token_types:
            return self.logit_bias(self.network(input_ids, attention_mask))
        return self.logit_bias(self.network(input_ids, attention_mask, token_type_ids))

    def _own_code(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None
    ) -> Tensor:
        """The logits of the classifier's own forward; dynamic linear while explained."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with DynamicLinearMode(self.network) if self.explaining else contextlib.nullcontext():
            output = self.network(**inputs, return_dict=True)
        return output.logits

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` to ``directory``; returns it.

        Example:
            >>> import tempfile, torch, bcosify
            >>> from transformers import GPT2Config, GPT2ForSequenceClassification
            >>> config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30, n_positions=8,
            ...                     bos_token_id=1, eos_token_id=1)
            >>> model, _ = bcosify.convert(GPT2ForSequenceClassification(config))
            >>> folder = model.save_pretrained(tempfile.mkdtemp())
            >>> ids = torch.tensor([[1, 2, 3]])
            >>> torch.equal(bcosify.load(folder)(ids), model(ids))
            True
        """
        return write_pretrained(directory, self, self.config.to_dict())

    def _card_facts(self) -> dict[str, Any]:
        config, options = self.config, self.config.options
        names = config.class_names or []
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return {
            "title": f"B-cos {config.architecture}",
            "details": {
                "source model": f"transformers `{config.architecture}`",
                "conversion": f"B = {options.b:g}, query/key/value projections "
                f"`{options.qkv_projection}`, activations `{options.activations}`",
                "input": "token ids and an attention mask, from the original's tokenizer",
                "classes": f"{len(names)} ({shown})" if names else "not recorded",
            },
            "explain": [
                "e = bcosify.explain_text(model, tokenizer, ['a text'])  # per-token",
            ],
        }


def read_text_config(directory: str | Path) -> TextModelConfig:
    """Read ``config.json`` of a saved text model, every field checked
    (:data:`TEXT_CONFIG_FIELDS`, the transformers config by
    :mod:`bcosify.models.transformers_config`)."""

    def fits(config: dict[str, Any]) -> None:
        architecture, model_type = config["architecture"], config["hf_config"]["model_type"]
        if architecture not in _architectures():
            raise FieldError(
                f"architecture: {architecture!r} is not a text classifier bcosify converts "
                f"({', '.join(_architectures())})"
            )
        if model_type != _architectures()[architecture]:
            raise FieldError(f"hf_config: a {model_type} config does not fit {architecture}")
        names, labels = config.get("class_names"), build_config(config["hf_config"]).num_labels
        if names and len(names) != labels:
            raise FieldError(
                f"class_names: {len(names)} names for a classifier of {labels} classes"
            )

    data = read_checked_config(
        directory,
        TEXT_FORMAT,
        TEXT_CONFIG_FIELDS,
        ("architecture", "hf_config", "options"),
        rule=fits,
    )
    try:
        return TextModelConfig.from_dict(data)
    except OptionsError as error:
        path = Path(directory) / CONFIG_FILE
        raise CheckpointError(f"{str(path)!r} is not a valid bcosify config: {error}") from None
