"""Ordinary text classifiers: a transformers sequence classifier behind bcosify's text interface
(token ids and an attention mask in, logits out), its tokenizer, and local folders of both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ModelSourceError
from ..schema import AnyOf, FieldError, Record, Text
from ..serialization import MAX_CONFIG_BYTES, atomic_write, load_pretrained, read_json

__all__ = [
    "TextClassifier",
    "is_hf_text_folder",
    "load_hf_text_classifier",
    "load_tokenizer",
    "padding_mask",
    "save_tokenizer",
    "text_logits",
]


class TextClassifier(nn.Module):
    """A transformers ``AutoModelForSequenceClassification`` model that takes ``input_ids`` (and
    an ``attention_mask``) and returns the logits tensor, as a converted
    :class:`~bcosify.convert.BcosTextModel` does: the training loop, the explainers and the
    metrics take either.

    A missing attention mask is ``input_ids != pad_token_id`` (the config's), else all ones, so
    a padded batch of ids is a complete input.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30, pad_token_id=0)
        >>> model = TextClassifier(BertForSequenceClassification(config))
        >>> model(torch.tensor([[2, 5, 0]])).shape
        torch.Size([1, 2])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def pad_token_id(self) -> int | None:
        return getattr(self.model.config, "pad_token_id", None)

    def default_mask(self, input_ids: Tensor) -> Tensor:
        """The attention mask of ``input_ids`` when none is given (:func:`padding_mask`)."""
        return padding_mask(input_ids, self.pad_token_id)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if attention_mask is None:
            attention_mask = self.default_mask(input_ids)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    def input_embeddings(self) -> nn.Module:
        """The token embedding module (attributions to its output are per token)."""
        return self.model.get_input_embeddings()


def padding_mask(input_ids: Tensor, pad_token_id: int | None) -> Tensor:
    """The attention mask of token ids: 1 where ``input_ids != pad_token_id``, all ones for a
    model without a padding token.

    Example:
        >>> import torch
        >>> padding_mask(torch.tensor([[5, 6, 0]]), 0).tolist()
        [[1, 1, 0]]
        >>> padding_mask(torch.tensor([[5, 6]]), None).tolist()
        [[1, 1]]
    """
    if pad_token_id is None:
        return torch.ones_like(input_ids)
    return (input_ids != pad_token_id).long()


def text_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The logits of a text classifier: a :class:`TextClassifier`, a converted
    :class:`~bcosify.convert.BcosTextModel`, or a transformers sequence classifier itself."""
    output = model(input_ids, attention_mask)
    return output if isinstance(output, Tensor) else output.logits


def is_hf_text_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a transformers model folder (``save_pretrained``) of a sequence
    classifier: a ``config.json`` whose ``architectures`` name one.

    Example:
        >>> import tempfile
        >>> is_hf_text_folder(tempfile.mkdtemp())
        False
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        config = read_json(path)
    except CheckpointError:
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(names, list) and any(
        isinstance(n, str) and n.endswith("ForSequenceClassification") for n in names
    )


def load_hf_text_classifier(folder: str | Path) -> TextClassifier:
    """The sequence classifier saved in a local transformers folder, as a
    :class:`TextClassifier`: built by bcosify from its checked ``config.json``
    (:mod:`bcosify.models.transformers_config`: one of transformers' own sequence classifiers,
    every field checked, nothing passed to ``from_pretrained``), its ``model.safetensors``
    loaded after its header was compared with the model built on the ``meta`` device.

    Raises:
        ModelSourceError: for a folder whose config or weights bcosify refuses.
    """
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelSourceError(
            "text models need transformers: pip install 'bcosify[transformers]'"
        ) from None
    from .transformers_config import build_model, read_folder_config, sequence_classifiers

    name, config = read_folder_config(folder, sequence_classifiers())
    try:
        model = load_pretrained(folder, lambda: build_model(name, config))
    except CheckpointError as error:
        raise ModelSourceError(str(error)) from None
    return TextClassifier(model.eval())


_TOKEN = AnyOf(Text(), Record({"content": Text()}, required=("content",)))
"""A special token in ``tokenizer_config.json``: its text, or an object with its ``content``."""
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token")
_SIDE = Text(choices=("left", "right"))


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """Write a fast tokenizer as :func:`load_tokenizer` reads it: ``tokenizer.json`` and the
    special tokens and sides in ``tokenizer_config.json``, each file written atomically.

    Example:
        >>> import tempfile
        >>> from bcosify.data.text import word_tokenizer
        >>> folder = tempfile.mkdtemp()
        >>> save_tokenizer(word_tokenizer(["good"]), folder)
        >>> load_tokenizer(folder)("good")["input_ids"]
        [2, 4, 3]
    """
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CheckpointError(
            f"cannot save a {type(tokenizer).__name__}: only fast (tokenizers-backed) "
            "tokenizers are saved with a model"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {n: getattr(tokenizer, n) for n in _SPECIAL_TOKENS if getattr(tokenizer, n, None)}
    settings.update(padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side)
    text = backend.to_str()
    atomic_write(folder / "tokenizer.json", lambda path: path.write_text(text))
    config = json.dumps(settings, indent=2) + "\n"
    atomic_write(folder / "tokenizer_config.json", lambda path: path.write_text(config))


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved beside a model (``tokenizer.save_pretrained(folder)``), read as data.

    ``tokenizer.json`` is read by the ``tokenizers`` library (a JSON description of the
    vocabulary, normaliser and splitting rules: no code), and of ``tokenizer_config.json`` only
    the special tokens and the padding and truncation sides are read (each checked); nothing
    else in either file is passed to transformers. The result is a
    ``PreTrainedTokenizerFast``.

    Example:
        >>> import tempfile
        >>> from bcosify.data.text import word_tokenizer
        >>> folder = tempfile.mkdtemp()
        >>> _ = word_tokenizer(["good", "film"]).save_pretrained(folder)
        >>> load_tokenizer(folder)("a good film")["input_ids"]
        [2, 1, 4, 5, 3]

    Raises:
        CheckpointError: when the folder holds no tokenizer or a broken one.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} holds no tokenizer.json: save the model's tokenizer beside it "
            "(tokenizer.save_pretrained(folder))"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{str(path)!r} is larger than a tokenizer can be")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust library raises its own exception type
        raise CheckpointError(f"could not read the tokenizer {str(path)!r}: {error}") from None
    options: dict[str, Any] = {}
    settings = Path(folder) / "tokenizer_config.json"
    if settings.is_file():
        data = read_json(settings, "tokenizer config")
        if not isinstance(data, dict):
            raise CheckpointError(f"{str(settings)!r} holds no JSON object")
        try:
            for name in _SPECIAL_TOKENS:
                if data.get(name) is not None:
                    token = _TOKEN.check(data[name], name)
                    options[name] = token if isinstance(token, str) else token["content"]
            for name in ("padding_side", "truncation_side"):
                if data.get(name) is not None:
                    options[name] = _SIDE.check(data[name], name)
        except FieldError as error:
            raise CheckpointError(f"{str(settings)!r} is refused: {error}") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **options)
