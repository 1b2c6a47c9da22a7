"""Token-by-token explanations of B-cos text classifiers.

A converted text classifier (:class:`~bcosify.convert.BcosTextModel`) computes, in explanation
mode, ``y = W(e) e + sum_k c_k`` where ``e`` are the embedded tokens (the token embedding's
output) and the ``c_k`` its named constants (position and token-type embeddings, the logit
bias). One forward and one backward pass give ``W_c(e)``; a token's contribution is
``sum_d e[t, d] * W_c(e)[t, d]``, and the contributions plus the constants are the logit.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import ExplanationError
from .core import DEFAULT_TOLERANCE, Target, check_pass, explained_pass

__all__ = [
    "TextExplanation",
    "TokenExplanation",
    "encode_texts",
    "explain_text",
    "explain_tokens",
    "token_html",
]


@dataclass(frozen=True)
class TokenExplanation:
    """The explanation of a batch of token ids. Tensors are detached, batch first, padded to
    the longest text (padding tokens contribute exactly zero).

    Attributes:
        input_ids, attention_mask: the model's input, ``(N, L)``.
        logits, targets, scores: the output, the explained classes (None for a callable
            target) and the explained logits.
        embeddings: the embedded tokens, the explained input, ``(N, L, D)``.
        weights: the dynamic weights ``d score / d embeddings``, ``(N, L, D)``.
        contributions: per token, ``(embeddings * weights).sum(-1)``, ``(N, L)``.
        constants: the contribution of every named constant, ``(N,)`` each.
        residual: ``scores - contributions.sum(1) - sum(constants)``: ~1e-7.
    """

    input_ids: Tensor
    attention_mask: Tensor
    logits: Tensor
    targets: Tensor | None
    scores: Tensor
    embeddings: Tensor
    weights: Tensor
    contributions: Tensor
    constants: dict[str, Tensor]
    residual: Tensor


@dataclass(frozen=True)
class TextExplanation(TokenExplanation):
    """The explanation of a batch of texts (:func:`explain_text`): a :class:`TokenExplanation`
    with the texts and their tokens.

    Attributes:
        texts: the explained texts.
        tokens: each text's tokens (padding excluded), as the tokenizer names them.
    """

    texts: list[str]
    tokens: list[list[str]]

    def __len__(self) -> int:
        return len(self.texts)

    def token_contributions(self, index: int) -> list[tuple[str, float]]:
        """``(token, contribution)`` of one text's tokens, in order."""
        values = self.contributions[index][self.attention_mask[index].bool()]
        return [(t, float(v)) for t, v in zip(self.tokens[index], values, strict=True)]

    def html(self, class_names: Sequence[str] | None = None) -> str:
        """An HTML fragment: every text with its tokens highlighted, red for evidence for the
        explained class and blue against it, each text scaled to its own largest contribution.
        """
        parts = []
        for i in range(len(self)):
            target = None if self.targets is None else int(self.targets[i])
            name = "" if target is None else str(class_names[target] if class_names else target)
            pairs = self.token_contributions(i)
            tokens, values = [t for t, _ in pairs], [v for _, v in pairs]
            label = f"class {html.escape(name)}: " if name else ""
            parts.append(
                f"<p class='tokens'><span class='note'>{label}logit "
                f"{float(self.scores[i]):.3f}</span><br>{token_html(tokens, values)}</p>"
            )
        return "\n".join(parts)

    def save_html(self, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
        """Write :meth:`html` as a standalone page; returns the path."""
        path = Path(path)
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>B-cos explanations</title></head><body style='font-family: system-ui, "
            f"sans-serif; max-width: 60rem'>{self.html(class_names)}</body></html>"
        )
        path.write_text(page, encoding="utf-8")
        return path


def token_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float | None = None,
    underline: Sequence[bool] | None = None,
) -> str:
    """Tokens as HTML spans coloured by their values: red for positive, blue for negative, the
    strength relative to ``scale`` (default: the largest absolute value); the value is the
    span's tooltip. Tokens whose ``underline`` is true (ground-truth evidence, say) are
    underlined.

    Example:
        >>> token_html(["good", "film"], [1.0, -0.5])  # doctest: +ELLIPSIS
        "<span title='1.000' style='background: rgba(214, 39, 40, 1.00)...'>good</span> ..."
    """
    scale = scale if scale is not None else max((abs(v) for v in values), default=0.0)
    marks = [False] * len(tokens) if underline is None else list(underline)
    spans = []
    for token, value, mark in zip(tokens, values, marks, strict=True):
        strength = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
        colour = "214, 39, 40" if value >= 0 else "31, 119, 180"
        line = "; text-decoration: underline" if mark else ""
        spans.append(
            f"<span title='{value:.3f}' style='background: rgba({colour}, {strength:.2f}); "
            f"padding: 0 2px; border-radius: 3px{line}'>{html.escape(token)}</span>"
        )
    return " ".join(spans)


def encode_texts(
    tokenizer: Any, texts: Sequence[str], max_length: int | None = None
) -> tuple[Tensor, Tensor, list[list[str]]]:
    """``(input_ids, attention_mask, tokens)`` of ``texts`` with a transformers tokenizer,
    padded to the longest text (and truncated to ``max_length`` tokens, if given).

    Example:
        >>> from bcosify.data.text import word_tokenizer
        >>> tokenizer = word_tokenizer(["good", "film"])
        >>> ids, mask, tokens = encode_texts(tokenizer, ["good film", "good"])
        >>> tokens
        [['[CLS]', 'good', 'film', '[SEP]'], ['[CLS]', 'good', '[SEP]']]
        >>> mask.tolist()
        [[1, 1, 1, 1], [1, 1, 1, 0]]
    """
    if isinstance(texts, str):
        raise ExplanationError("texts must be a list of strings; wrap a single text in a list")
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise ExplanationError(
            f"the tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__} "
            "(wrap a tokenizers.Tokenizer in "
            "transformers.PreTrainedTokenizerFast(tokenizer_object=...))"
        )
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    tokens = [
        tokenizer.convert_ids_to_tokens(row[keep.bool()].tolist())
        for row, keep in zip(ids, mask, strict=True)
    ]
    return ids, mask, tokens


def explain_text(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    target: Target = None,
    *,
    max_length: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    check: Literal["warn", "raise", "off"] = "warn",
) -> TextExplanation:
    """Explain a batch of texts token by token with a B-cos text model's own explanation.

    The texts are tokenized together (padded to the longest, with an attention mask), the
    model explains every one in one forward and one backward pass, and each token's
    contribution is its embedding times its dynamic weight, summed over the embedding
    dimension. Exact: contributions plus constants equal the explained logit (an inexact
    explanation warns, or raises with ``check="raise"``, as :func:`bcosify.explain` does).

    Args:
        model: a converted text classifier (:func:`bcosify.convert` of a transformers
            sequence classifier).
        tokenizer: the original's tokenizer (a transformers tokenizer).
        texts: the texts.
        target: None (the predicted class), an int, one class per text, or a callable on the
            logits, as for :func:`bcosify.explain`.
        max_length: truncate longer texts to this many tokens.

    Example:
        >>> import torch, bcosify
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from bcosify.data.text import word_tokenizer
        >>> tokenizer = word_tokenizer(["a", "good", "bad", "film"])
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=tokenizer.vocab_size)
        >>> model, _ = bcosify.convert(BertForSequenceClassification(config))
        >>> e = explain_text(model, tokenizer, ["a good film", "bad"], target=1)
        >>> e.contributions.shape, bool(e.residual.abs().max() < 1e-4)
        (torch.Size([2, 5]), True)
    """
    ids, mask, tokens = encode_texts(tokenizer, texts, max_length)
    run = _explain_ids(model, ids, mask, target, tolerance, check)
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    return TextExplanation(**fields, texts=list(texts), tokens=tokens)


def explain_tokens(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    target: Target = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    check: Literal["warn", "raise", "off"] = "warn",
) -> TokenExplanation:
    """:func:`explain_text` on token ids ``(N, L)`` (and their attention mask; by default the
    model's, from its padding token).

    Example:
        >>> import torch, bcosify
        >>> from transformers import GPT2Config, GPT2ForSequenceClassification
        >>> config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30, n_positions=8,
        ...                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
        >>> model, _ = bcosify.convert(GPT2ForSequenceClassification(config))
        >>> e = explain_tokens(model, torch.tensor([[5, 6, 7, 0]]))
        >>> e.contributions[0, 3].item()  # padding
        0.0
    """
    return _explain_ids(model, input_ids, attention_mask, target, tolerance, check)


def _explain_ids(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor | None,
    target: Target,
    tolerance: float,
    check: str,
) -> TokenExplanation:
    if check not in ("warn", "raise", "off"):
        raise ExplanationError(f"check must be 'warn', 'raise' or 'off', got {check!r}")
    if not isinstance(model, nn.Module):
        raise ExplanationError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise ExplanationError("token ids must be an integer tensor (N, L)")
    device = device_of(model)
    ids = ids.to(device)
    if mask is None:
        default = getattr(model, "default_mask", None)
        mask = default(ids) if callable(default) else torch.ones_like(ids)
    mask = mask.to(device)
    run = explained_pass(model, lambda: model(ids, mask), None, target, len(ids))
    if run.inputs.ndim != 3 or run.inputs.shape[:2] != ids.shape:
        raise ExplanationError(
            f"the explained input has shape {tuple(run.inputs.shape)}, not that of embedded "
            f"tokens (N, L, D) for token ids {tuple(ids.shape)}"
        )
    if check != "off":
        check_pass(model, run.inputs, run, tolerance, check)
    return TokenExplanation(
        ids,
        mask,
        run.logits,
        run.targets,
        run.scores,
        run.inputs,
        run.weights,
        run.contributions.sum(-1),
        run.constants,
        run.residual,
    )
