"""Ordinary text classifiers: a transformers sequence classifier behind bcosify's text interface
(token ids and an attention mask in, logits out), its tokenizer, and local folders of both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ModelSourceError

__all__ = [
    "TextClassifier",
    "is_hf_text_folder",
    "load_hf_text_classifier",
    "load_tokenizer",
    "padding_mask",
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
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(names, list) and any(
        isinstance(n, str) and n.endswith("ForSequenceClassification") for n in names
    )


def load_hf_text_classifier(folder: str | Path) -> TextClassifier:
    """The sequence classifier saved in a local transformers folder (safetensors weights only;
    nothing is downloaded), as a :class:`TextClassifier`.

    Raises:
        ModelSourceError: for a folder transformers cannot load from safetensors.
    """
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(
            "text models need transformers: pip install 'bcosify[transformers]'"
        ) from None
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as error:
        raise ModelSourceError(
            f"could not load the text classifier in {str(folder)!r} from safetensors weights: "
            f"{str(error).splitlines()[0]}"
        ) from None
    return TextClassifier(model.eval())


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved beside a model (``tokenizer.save_pretrained(folder)``), read locally.

    Raises:
        CheckpointError: when the folder holds no tokenizer.
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} holds no tokenizer.json: save the model's tokenizer beside it "
            "(tokenizer.save_pretrained(folder))"
        )
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"could not read the tokenizer in {str(folder)!r}: {error}") from None
