"""Converting a text classifier that no family knows: module swaps, made exact at run time.

A transformers sequence classifier that is neither a known architecture nor built as Llama or
BERT is (:mod:`bcosify.convert.families.transformers_text`) keeps its own code. Its modules are
swapped by the rule table, without tracing: linear layers (and GPT-style ``Conv1D``) become
B-cos layers, those that compute queries, keys or values stay linear as the
``qkv_projection`` option says (found by their names), layer norms lose their bias, and the
token embedding becomes the explained input. Everything its code computes itself (attention,
RMS norms, gates, activations, position embeddings) is made dynamic linear while it is
explained, by :class:`~bcosify.nn.DynamicLinearMode`; the explanation's residual checks each
example. At B = 1 with ``keep_bias=True`` the swaps are the identity, so the converted model
computes the original's logits.
"""

from __future__ import annotations

import functools

from torch import nn

from ..nn import BcosGELU, BcosTokenEmbedding
from .families.transformers_text import (
    _as_linear,
    conv1d,
    scaled_token_embedding,
    token_embedding,
)
from .report import ConversionReport, Replacement
from .rules import (
    Rule,
    RuleContext,
    UnsupportedModule,
    activation,
    layernorm,
    linear,
    qkv_projection,
)

__all__ = ["QKV_NAMES", "swap_modules"]

QKV_NAMES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "qkv_proj",
        "query",
        "key",
        "value",
        "q",
        "k",
        "v",
        "qkv",
        "q_lin",
        "k_lin",
        "v_lin",
        "query_key_value",
        "c_attn",
        "Wqkv",
        "in_proj",
    }
)
"""Names of the linear layers that compute queries, keys or values in transformers' code."""


@functools.cache
def _conv1d_types() -> tuple[type[nn.Module], ...]:
    """GPT-style ``Conv1D``: a linear layer with its weight transposed (transformers is imported
    only when a text model is converted)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - only text models come here
        return ()
    return (Conv1D,)


def _rules() -> dict[type[nn.Module], Rule]:
    rules: dict[type[nn.Module], Rule] = {nn.Linear: linear, nn.LayerNorm: layernorm}
    rules.update({cls: conv1d for cls in _conv1d_types()})
    try:  # BLOOM's GELU is an autograd function, whose operations no mode sees
        from transformers.models.bloom.modeling_bloom import BloomGelu
    except ImportError:  # pragma: no cover - only text models come here
        return rules
    return {**rules, BloomGelu: activation(lambda m: BcosGELU("tanh"))}


def _decodes_tokens(model: nn.Module) -> bool:
    """Whether a classifier's decoder embeds tokens of its own (BART, T5), rather than the
    encoder alone classifying (T5Gemma's classifier)."""
    decoder = getattr(getattr(model, "base_model", model), "decoder", None)
    return decoder is not None and any(
        isinstance(m, nn.Embedding) and m.embedding_dim > 1 for m in decoder.modules()
    )


def _qkv(module: nn.Module, context: RuleContext) -> nn.Module:
    return qkv_projection(_as_linear(module), context)


def swap_modules(
    model: nn.Module, options: object, report: ConversionReport, user_rules: dict | None = None
) -> nn.Module:
    """Swap ``model``'s modules in place as the module's description says; returns it.

    Raises:
        UnsupportedModule: when the model's token embedding is not an embedding table.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from bcosify.convert import TextConversionOptions
        >>> from bcosify.convert.report import ConversionReport
        >>> config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=16, vocab_size=20)
        >>> model = BertForSequenceClassification(config)
        >>> _ = swap_modules(model, TextConversionOptions(), ConversionReport("BERT"))
        >>> type(model.bert.encoder.layer[0].attention.self.query).__name__  # linear
        'Linear'
        >>> type(model.classifier).__name__
        'BcosLinear'
    """
    if getattr(model.config, "is_encoder_decoder", False) and _decodes_tokens(model):
        raise UnsupportedModule(
            "an encoder-decoder classifier: the tokens enter twice (the encoder's input and, "
            "shifted, the decoder's), which one explanation per token does not yet hold"
        )
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise UnsupportedModule(
            f"its token embedding is a {type(embedding).__name__}, not an embedding table"
        )
    rules = {**_rules(), **(user_rules or {})}
    for path, module in list(model.named_modules()):
        if module is embedding:
            rule: Rule | None = (
                token_embedding if type(module) is nn.Embedding else scaled_token_embedding
            )
        elif type(module) in (nn.Linear, *_conv1d_types()) and path.rpartition(".")[2] in QKV_NAMES:
            rule = _qkv
        else:
            rule = rules.get(type(module))
        if rule is None or not path:
            continue
        context = RuleContext(options, path, lambda child, name: child)  # type: ignore[arg-type]
        new = rule(module, context)
        if new is not module:
            owner, _, name = path.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, name, new)
        entry = Replacement(path, type(module).__name__, type(new).__name__)
        (report.kept if type(new) is type(module) else report.replaced).append(entry)
    if not any(isinstance(m, BcosTokenEmbedding) for m in model.modules()):
        raise UnsupportedModule("its token embedding could not be made the explained input")
    report.notes.append(
        f"{type(model).__name__}: no family knows its code, which runs as it is: modules "
        "swapped, every operation of its own made dynamic linear while it is explained "
        "(bcosify.nn.DynamicLinearMode); queries, keys and values found by their layers' names"
    )
    return model
