"""transformers: text sequence classifiers (BERT, DistilBERT, RoBERTa, GPT-2, Llama).

``AutoModelForSequenceClassification`` models of these families convert with their module tree
kept. Their forwards branch on arguments, build masks with library helpers and return output
objects, so :func:`traceable` replaces the forward of the classifier, of its base model and of
its encoder stack by the same computation on tensors (``input_ids`` and ``attention_mask`` in,
logits out), which torch.fx can trace; every module keeps its path and class. The rules:

- the token embedding becomes :class:`~bcosify.nn.BcosTokenEmbedding`, the explained input;
- BERT-style embedding modules (``BertEmbeddings``, ``RobertaEmbeddings``, DistilBERT's
  ``Embeddings``) add their position and token-type embeddings as named constants (GPT-2's
  positional table is routed by the converter, Llama has rotary embeddings on queries and keys);
- self-attention modules keep their class and projections and get a forward with queries and
  keys detached when explaining (:class:`~bcosify.nn.TextAttention`): padding and causal masks,
  RoPE and grouped-query attention kept;
- GPT-2's ``Conv1D`` becomes a B-cos linear layer, ``LlamaRMSNorm`` a
  :class:`~bcosify.nn.BcosRMSNorm`, transformers' SiLU a gate (SwiGLU) or ``BcosSiLU``;
- the BERT pooler's and the RoBERTa head's tanh has no dynamic-linear form: it becomes the
  identity (kept with ``keep_bias=True``, the equivalence check), with a note in the report.

The mask is one boolean ``(N, 1, L, L)`` tensor (True: may attend) from the padding mask (and
causality for decoders); every token also attends to itself, so that a padding token's row is
never empty. Valid tokens never attend to padding, so padding tokens contribute nothing.
Decoders classify at the last token whose attention mask is 1.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import (
    BcosLayerNorm,
    BcosRMSNorm,
    BcosSiLU,
    BcosSquaredReLU,
    BcosTokenEmbedding,
    TextAttention,
)
from ...nn.trace import traced_constant
from ..dynamic import dynamic_class
from ..rules import Rule, RuleContext, UnsupportedModule, activation, keep
from ..rules import linear as linear_rule
from ..rules import qkv_projection as qkv_projection_rule
from ..tracing import replace_methods
from . import Family, Support

__all__ = [
    "ARCHITECTURES",
    "FAMILY",
    "TextArchitecture",
    "self_attention_mask",
    "structural_attention",
    "structural_rules",
    "text_architecture",
    "traceable",
]


@dataclass(frozen=True)
class TextArchitecture:
    """A sequence classifier the converter knows.

    Attributes:
        name: its transformers class name (``"BertForSequenceClassification"``).
        token_types: whether it takes ``token_type_ids``.
        causal: a decoder (causal attention, classified at the last token).
    """

    name: str
    token_types: bool
    causal: bool


ARCHITECTURES = {
    a.name: a
    for a in (
        TextArchitecture("BertForSequenceClassification", token_types=True, causal=False),
        TextArchitecture("RobertaForSequenceClassification", token_types=True, causal=False),
        TextArchitecture("DistilBertForSequenceClassification", token_types=False, causal=False),
        TextArchitecture("GPT2ForSequenceClassification", token_types=False, causal=True),
        TextArchitecture("LlamaForSequenceClassification", token_types=False, causal=True),
    )
}


def text_architecture(model: nn.Module) -> TextArchitecture | None:
    """The :class:`TextArchitecture` of a transformers sequence classifier, else None.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> text_architecture(BertForSequenceClassification(config)).token_types
        True
    """
    cls = getattr(type(model), "_bcosify_original", type(model))
    if not cls.__module__.startswith("transformers."):
        return None
    known = ARCHITECTURES.get(cls.__name__)
    if known is not None or not cls.__name__.endswith("ForSequenceClassification"):
        return known
    if _llama_like(model):
        return TextArchitecture(cls.__name__, token_types=False, causal=True)
    if _bert_like(model) is not None:
        embeddings = _base_model(model).embeddings
        types = "token_type_embeddings" in embeddings._modules
        return TextArchitecture(cls.__name__, token_types=types, causal=False)
    return None


def _children(module: nn.Module) -> set[str]:
    return set(module._modules)


def _bert_like(model: nn.Module) -> str | None:
    """``"pooler"`` or ``"head"`` for an encoder classifier built as BERT or RoBERTa is
    (found by structure: CamemBERT, XLM-RoBERTa, Data2Vec-Text, ...), else None: a base model
    of BERT-style ``embeddings`` and an ``encoder.layer`` stack whose self-attention has only
    ``query``, ``key``, ``value`` and dropout, then a linear ``classifier`` on the pooler (BERT)
    or a classification head of ``dense``, tanh and ``out_proj`` (RoBERTa).
    :func:`bcosify.convert.text.convert_text` checks that the forward it then runs computes
    the original's logits before converting."""
    base = _base_model(model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    if not _bert_like_embeddings(getattr(base, "embeddings", None)):
        return None
    attentions = [m for m in model.modules() if _bert_like_attention(m)]
    if len(attentions) != len(layers):
        return None
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear) and isinstance(
        getattr(model, "dropout", None), nn.Dropout
    ):
        pooler = getattr(base, "pooler", None)
        return "pooler" if pooler is None or _tanh_pooler(pooler) else None
    return "head" if classifier is not None and _tanh_head(classifier) else None


def _bert_like_embeddings(module: nn.Module | None) -> bool:
    allowed = {"word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"}
    return (
        module is not None
        and isinstance(getattr(module, "word_embeddings", None), nn.Embedding)
        and isinstance(getattr(module, "position_embeddings", None), nn.Embedding)
        and isinstance(getattr(module, "LayerNorm", None), nn.LayerNorm)
        and _children(module) <= allowed | {"dropout"}
    )


def _bert_like_attention(module: nn.Module) -> bool:
    """BERT's self-attention: query, key and value projections and a dropout, nothing else
    (no relative-position tables, no cross-attention)."""
    return (
        all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value"))
        and _children(module) <= {"query", "key", "value", "dropout"}
        and hasattr(module, "attention_head_size")
        and hasattr(module, "scaling")
        and not getattr(module, "is_cross_attention", False)
        and not any(True for _ in module.parameters(recurse=False))
    )


def _tanh_pooler(module: nn.Module) -> bool:
    return _children(module) == {"dense", "activation"} and isinstance(module.activation, nn.Tanh)


def _tanh_head(module: nn.Module) -> bool:
    """RoBERTa's classification head (first token, dense, tanh, out_proj): the rule's forward
    is that computation, so no other module (Electra's GELU head) is taken for it."""
    return _children(module) == {"dense", "dropout", "out_proj"} and type(module).__name__.endswith(
        "ClassificationHead"
    )


def _base_model(model: nn.Module) -> nn.Module | None:
    return getattr(model, getattr(model, "base_model_prefix", "") or "model", None)


def _llama_like(model: nn.Module) -> bool:
    """A decoder classifier built as Llama is (found by structure, whatever its class name:
    Qwen2, Qwen3, Mistral, ...): a linear ``score`` on a base model of ``embed_tokens``,
    ``layers`` whose ``self_attn`` has ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (and
    optionally ``q_norm``/``k_norm``, per head or of the whole projection) with rotary
    embeddings, ``norm`` and
    ``rotary_emb``. :func:`bcosify.convert.text.convert_text` checks that the forward it then
    runs computes the original's logits before converting."""
    base = _base_model(model)
    layers = getattr(base, "layers", None)
    if not isinstance(getattr(model, "score", None), nn.Linear) or base is None:
        return False
    if not isinstance(getattr(base, "embed_tokens", None), nn.Embedding):
        return False
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    if _final_norm(base) is None or getattr(base, "rotary_emb", None) is None:
        return False
    return all(_llama_like_attention(getattr(layer, "self_attn", None)) for layer in layers)


def _llama_projections(attention: nn.Module | None) -> tuple[tuple[str, ...], str] | None:
    """The names of a Llama-like attention's query, key and value projections (three, or
    Phi-3's one fused ``qkv_proj``) and of its output projection (``o_proj``, Phi's
    ``dense``); None if it has not these linear layers."""

    def linear(*names: str) -> bool:
        return all(isinstance(getattr(attention, n, None), nn.Linear) for n in names)

    qkv = ("q_proj", "k_proj", "v_proj") if linear("q_proj", "k_proj", "v_proj") else None
    qkv = qkv or (("qkv_proj",) if linear("qkv_proj") else None)
    out = next((name for name in ("o_proj", "dense") if linear(name)), None)
    return (qkv, out) if qkv and out else None


def _final_norm(base: nn.Module) -> nn.Module | None:
    """A decoder's norm after its last layer (``norm``; Phi's ``final_layernorm``)."""
    return getattr(base, "norm", None) or getattr(base, "final_layernorm", None)


def _llama_like_attention(attention: nn.Module | None) -> bool:
    projections = _llama_projections(attention)
    if attention is None or projections is None:
        return False
    if not hasattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb"):
        return False
    # nothing else to compute with: no other submodule (HunYuan's query_layernorm), no
    # parameter of its own (DiffLlama's lambdas, GPT-OSS's sinks)
    children = {name for name, _ in attention.named_children()}
    if children - {*projections[0], projections[1], "q_norm", "k_norm"} or any(
        True for _ in attention.parameters(recurse=False)
    ):
        return False
    # nor a tanh on the scores (Gemma 2's soft-capping), which random weights too small to
    # reach it would let pass the forward's check
    if any("softcap" in name and value is not None for name, value in vars(attention).items()):
        return False
    head_dim = getattr(attention, "head_dim", None)
    for name in ("q_norm", "k_norm"):  # Qwen3: per head; OLMo 2 normalises whole projections
        norm = getattr(attention, name, None)
        weight = getattr(norm, "weight", None)
        whole = getattr(getattr(attention, f"{name[0]}_proj", None), "out_features", None)
        if norm is not None and (weight is None or weight.shape[0] not in (head_dim, whole)):
            return False
    return True


def self_attention_mask(attention_mask: Tensor, causal: bool) -> Tensor:
    """The boolean ``(N, 1, L, L)`` mask of self-attention (True: may attend) from a padding
    mask ``(N, L)`` (1 for tokens, 0 for padding): no token attends to padding, a decoder's
    tokens only to earlier ones, and every token to itself (so no row is empty).

    Example:
        >>> self_attention_mask(torch.tensor([[1, 1, 0]]), causal=True)[0, 0].int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    allowed = attention_mask.bool()[:, None, None, :]
    if causal:
        allowed = allowed & (positions[:, None] >= positions[None, :])
    return allowed | (positions[:, None] == positions[None, :])


def _last_tokens(attention_mask: Tensor) -> Tensor:
    """The position of the last token whose mask is 1, per example (left or right padding)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


# -- forwards of the classifiers, base models and stacks, on tensors ---------------------------


def _bert_classifier(
    self: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    base = getattr(self, self.base_model_prefix)  # bert, or the encoder of a BERT-like model
    return self.classifier(self.dropout(base(input_ids, attention_mask, token_type_ids)))


def _roberta_classifier(
    self: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    base = getattr(self, self.base_model_prefix)  # roberta, camembert, xlm-roberta, ...
    return self.classifier(base(input_ids, attention_mask, token_type_ids))


def _distilbert_classifier(self: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    hidden = self.distilbert(input_ids, attention_mask)
    pooled = F.relu(self.pre_classifier(hidden[:, 0]))
    return self.classifier(self.dropout(pooled))


def _decoder_classifier(self: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    hidden = getattr(self, self.base_model_prefix)(input_ids, attention_mask)
    logits = self.score(hidden)
    batch = torch.arange(input_ids.shape[0], device=input_ids.device)
    return logits[batch, _last_tokens(attention_mask)]


def _bert_model(
    self: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    hidden = self.embeddings(input_ids, token_type_ids)
    mask = self_attention_mask(attention_mask, causal=bool(self.config.is_decoder))
    hidden = self.encoder(hidden, mask)
    return hidden if self.pooler is None else self.pooler(hidden)


def _distilbert_model(self: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    hidden = self.embeddings(input_ids)
    return self.transformer(hidden, self_attention_mask(attention_mask, causal=False))


def _encoder_stack(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    for layer in self.layer:
        hidden_states = layer(hidden_states, attention_mask)
    return hidden_states


def _gpt2_model(self: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    # the positional embedding as the table it is: the model looks it up at 0..L-1
    hidden = self.wte(input_ids) + self.wpe.weight[: input_ids.shape[1]]
    hidden = self.drop(hidden)
    mask = self_attention_mask(attention_mask, causal=True)
    for block in self.h:
        hidden = block(hidden, None, mask)
    return self.ln_f(hidden)


def _llama_model(self: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    hidden = self.embed_tokens(input_ids)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    layers = self.layers[: self.config.num_hidden_layers]
    masks = _layer_masks(self.config, attention_mask)
    if getattr(self, "embed_dropout", None) is not None:  # Phi
        hidden = self.embed_dropout(hidden)
    for layer, mask, rotary in zip(layers, masks, _rotary(self, positions), strict=False):
        hidden = layer(
            hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary
        )
    return _final_norm(self)(hidden)


def _rotary(self: nn.Module, positions: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Each decoder layer's cos and sin of the rotary embedding: constants (the weight only
    lends its dtype); one per layer type where the embedding takes it (OLMo 3, Gemma 3:
    sliding-window layers rotate with another base)."""
    count, weight = int(self.config.num_hidden_layers), self.embed_tokens.weight
    if "layer_type" not in inspect.signature(self.rotary_emb.forward).parameters:
        return [self.rotary_emb(weight, positions)] * count
    kinds = self.config.layer_types[:count]
    found = {kind: self.rotary_emb(weight, positions, kind) for kind in dict.fromkeys(kinds)}
    return [found[kind] for kind in kinds]


def _layer_masks(config: Any, attention_mask: Tensor) -> list[Tensor]:
    """Each decoder layer's mask: causal, and for a sliding-window layer (``layer_types``, or
    every layer of a config with a ``sliding_window`` and no layer types: Mistral) limited to
    the ``sliding_window`` latest tokens, as transformers masks them."""
    full = self_attention_mask(attention_mask, causal=True)
    window = getattr(config, "sliding_window", None)
    count = int(config.num_hidden_layers)
    kinds = getattr(config, "layer_types", None) or (
        ["sliding_attention" if window else "full_attention"] * count
    )
    if window is None or "sliding_attention" not in kinds:
        return [full] * count
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    sliding = full & (positions[:, None] - positions[None, :] < int(window))
    return [sliding if kind == "sliding_attention" else full for kind in kinds[:count]]


def _forwards() -> dict[type[nn.Module], Callable[..., Tensor]]:
    try:
        from transformers.models.bert import modeling_bert as bert
        from transformers.models.distilbert import modeling_distilbert as distilbert
        from transformers.models.gpt2 import modeling_gpt2 as gpt2
        from transformers.models.llama import modeling_llama as llama
        from transformers.models.roberta import modeling_roberta as roberta
    except ImportError:
        return {}
    return {
        bert.BertForSequenceClassification: _bert_classifier,
        bert.BertModel: _bert_model,
        bert.BertEncoder: _encoder_stack,
        roberta.RobertaForSequenceClassification: _roberta_classifier,
        roberta.RobertaModel: _bert_model,
        roberta.RobertaEncoder: _encoder_stack,
        distilbert.DistilBertForSequenceClassification: _distilbert_classifier,
        distilbert.DistilBertModel: _distilbert_model,
        distilbert.Transformer: _encoder_stack,
        gpt2.GPT2ForSequenceClassification: _decoder_classifier,
        gpt2.GPT2Model: _gpt2_model,
        llama.LlamaForSequenceClassification: _decoder_classifier,
        llama.LlamaModel: _llama_model,
    }


def _structural_forwards(model: nn.Module) -> dict[type[nn.Module], Callable[..., Tensor]]:
    """The forwards of a classifier found by structure and of its base model."""
    cls = getattr(type(model), "_bcosify_original", type(model))
    if cls.__name__ in ARCHITECTURES:
        return {}
    if _llama_like(model):
        return {type(model): _decoder_classifier, type(_base_model(model)): _llama_model}
    kind = _bert_like(model)
    if kind is None:
        return {}
    base = _base_model(model)
    classifier = _bert_classifier if kind == "pooler" else _roberta_classifier
    return {type(model): classifier, type(base): _bert_model, type(base.encoder): _encoder_stack}


@contextlib.contextmanager
def structural_attention(network: nn.Module) -> Iterator[None]:
    """While in the block, the attention modules of a classifier found by structure (already
    :func:`traceable`) run the forward their rule gives them (:class:`~bcosify.nn.TextAttention`
    on their own projections), so that the whole computation the conversion assumes can be
    compared with the original's; their classes are restored afterwards."""
    ruled = structural_rules(network)
    swapped = [
        (module, type(module), forward)
        for module in network.modules()
        for test, forward in (
            (_llama_like_attention, _llama_attention),
            (_bert_like_attention, _bert_attention),
        )
        if test(module) and type(module) in ruled
    ]
    try:
        for module, _, forward in swapped:
            names = {"projections": _llama_projections(module)}  # as the rule records them
            _in_place(module, (TextAttention,), {"forward": forward, **names})
        yield
    finally:
        for module, cls, _ in swapped:
            module.__class__ = cls


def structural_rules(model: nn.Module) -> dict[type[nn.Module], Rule]:
    """Rule-table entries for the building blocks of a classifier found by structure (its
    attention and RMS norm classes, whatever they are named); empty for any other model.

    Example:
        >>> from transformers import Qwen2Config, Qwen2ForSequenceClassification
        >>> config = Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                      num_attention_heads=2, num_key_value_heads=1, vocab_size=30)
        >>> sorted(t.__name__ for t in structural_rules(Qwen2ForSequenceClassification(config)))
        ['Qwen2Attention', 'Qwen2RMSNorm']
    """
    if not _structural_forwards(model):
        return {}
    rules: dict[type[nn.Module], Rule] = {}
    for module in model.modules():
        if _llama_like_attention(module):
            qkv, out = _llama_projections(module)  # type: ignore[misc]
            rules[type(module)] = _attention_rule(_llama_attention, qkv, (out,))
        elif type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            rules[type(module)] = rmsnorm
        elif _weightless_layer_norm(module):
            rules[type(module)] = weightless_layer_norm
        elif isinstance(module, nn.Embedding) and type(module) is not nn.Embedding:
            rules[type(module)] = scaled_token_embedding
        elif _bert_like_attention(module):
            rules[type(module)] = _attention_rule(_bert_attention, ("query", "key", "value"))
        elif _bert_like_embeddings(module):
            rules[type(module)] = text_embeddings
        elif _tanh_pooler(module):
            rules[type(module)] = pooler
        elif _tanh_head(module):
            rules[type(module)] = roberta_head
    return rules


def _weightless_layer_norm(module: nn.Module) -> bool:
    """OLMo's ``OlmoLayerNorm``: a layer norm without parameters (``normalized_shape`` only)."""
    return (
        type(module).__name__.endswith("LayerNorm")
        and not isinstance(module, nn.LayerNorm)
        and isinstance(getattr(module, "normalized_shape", None), tuple)
        and not any(True for _ in module.parameters())
    )


def weightless_layer_norm(module: nn.Module, context: RuleContext) -> nn.Module:
    """A layer norm without parameters (OLMo) -> :class:`~bcosify.nn.BcosLayerNorm` without
    weight (its mean and the normaliser handled as every layer norm's; eps 1e-5, OLMo's)."""
    return BcosLayerNorm(module.normalized_shape[-1], 1e-5, False, bias=False)


def traceable(model: nn.Module) -> list[str]:
    """Replace the forward of a text classifier, its base model and its encoder stack in
    ``model`` (a copy) by the same computation on tensors, which torch.fx can trace; returns
    a note. Other models are left alone.

    The classifier then takes ``(input_ids, attention_mask[, token_type_ids])`` and returns
    the logits; every module keeps its path and class.

    Example:
        >>> from transformers import GPT2Config, GPT2ForSequenceClassification
        >>> config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30, n_positions=8,
        ...                     bos_token_id=1, eos_token_id=1)
        >>> model = GPT2ForSequenceClassification(config).eval()
        >>> traceable(model)[0].startswith("the forward of GPT2ForSequenceClassification")
        True
        >>> model(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]])).shape
        torch.Size([1, 2])
    """
    if text_architecture(model) is None:
        return []
    forwards = {**_forwards(), **_structural_forwards(model)}
    replaced = []
    for module in model.modules():
        forward = forwards.get(type(module))
        if forward is not None:
            replaced.append(type(module).__name__)
            replace_methods(module, {"forward": forward})
    return [
        f"the forward of {', '.join(dict.fromkeys(replaced))} (transformers) replaced by the "
        "same computation on tensors (input_ids and attention_mask in, logits out), which "
        "torch.fx can trace"
    ]


# -- rules -------------------------------------------------------------------------------------


def _in_place(module: nn.Module, bases: tuple[type, ...], namespace: dict[str, Any]) -> nn.Module:
    """``module`` as an instance of ``Bcos<its class>``, a subclass of ``bases`` and of its
    class (``isinstance`` holds, children and paths stay), with ``namespace`` in it."""
    module.__class__ = dynamic_class(_bcos_subclass, type(module), bases, namespace)
    return module


def _bcos_subclass(cls: type, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
    """``Bcos<cls>`` (``namespace`` of module-level functions and plain values, so that a
    converted model pickles: :mod:`bcosify.convert.dynamic`)."""
    namespace = {
        **namespace,
        "__module__": cls.__module__,
        "_bcosify_original": cls,
        "_bcosify_converted": True,
    }
    return type(f"Bcos{cls.__name__}", (*bases, cls), namespace)


def token_embedding(module: nn.Module, context: RuleContext) -> nn.Module:
    """An ``nn.Embedding`` on the explained path (a text model's token embedding) ->
    :class:`~bcosify.nn.BcosTokenEmbedding`, the input explanations are taken with respect to.

    Example:
        >>> from bcosify.convert import TextConversionOptions
        >>> context = RuleContext(TextConversionOptions(), "wte", lambda m, n: m)
        >>> type(token_embedding(torch.nn.Embedding(5, 3), context)).__name__
        'BcosTokenEmbedding'
    """
    assert isinstance(module, nn.Embedding)
    if module.max_norm is not None:
        raise UnsupportedModule("an embedding with max_norm renormalises its rows when called")
    return BcosTokenEmbedding.from_embedding(module)


def scaled_token_embedding(module: nn.Module, context: RuleContext) -> nn.Module:
    """A subclass of ``nn.Embedding`` whose forward is its table times one number (Gemma's
    ``GemmaTextScaledWordEmbedding``: ``sqrt(hidden_size)``) -> :class:`~bcosify.nn.
    BcosTokenEmbedding` of the scaled table; the number is measured on the first token ids
    and checked on them, so any other forward is refused.

    Example:
        >>> from bcosify.convert import TextConversionOptions
        >>> class Scaled(torch.nn.Embedding):
        ...     def forward(self, ids):
        ...         return super().forward(ids) * 4.0
        >>> context = RuleContext(TextConversionOptions(), "embed_tokens", lambda m, n: m)
        >>> layer, ids = Scaled(5, 3), torch.tensor([[1, 4]])
        >>> torch.equal(scaled_token_embedding(layer, context)(ids), layer(ids))
        True
    """
    assert isinstance(module, nn.Embedding)
    weight = module.weight.detach()
    ids = torch.arange(min(module.num_embeddings, 256), device=weight.device)
    with torch.no_grad():
        found, table = module(ids), weight[ids]
        scale = float((found * table).sum() / (table * table).sum().clamp_min(1e-30))
        if not torch.allclose(found, table * scale, rtol=1e-5, atol=1e-6):
            raise UnsupportedModule(
                f"{type(module).__name__} computes something other than its table times one "
                "number; give it a rule"
            )
    plain = nn.Embedding(
        module.num_embeddings,
        module.embedding_dim,
        module.padding_idx,
        module.max_norm,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(weight * scale)
    return token_embedding(plain, context)


def _position_ids(module: nn.Module, input_ids: Tensor) -> Tensor:
    create = getattr(type(module), "create_position_ids_from_input_ids", None)
    if create is not None:  # RoBERTa: positions count tokens, from padding_idx + 1
        return create(input_ids, module.padding_idx)
    return torch.arange(input_ids.shape[1], device=input_ids.device)[None]


def _text_embeddings(
    self: nn.Module,
    input_ids: Tensor,
    token_type_ids: Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> Tensor:
    embeds = self.word_embeddings(input_ids)
    positions = self.position_embeddings(_position_ids(self, input_ids))
    embeds = embeds + traced_constant(self, "position_embeddings.weight", positions, embeds)
    if "token_type_embeddings" in self._modules:
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        value = self.token_type_embeddings(types)
        embeds = embeds + traced_constant(self, "token_type_embeddings.weight", value, embeds)
    return self.dropout(self.LayerNorm(embeds))


def text_embeddings(module: nn.Module, context: RuleContext) -> nn.Module:
    """BERT-style embeddings (word + position [+ token type], layer norm, dropout): the word
    embedding the explained input, the others named constants."""
    module.word_embeddings = context.convert_child(module.word_embeddings, "word_embeddings")
    module.LayerNorm = context.convert_child(module.LayerNorm, "LayerNorm")
    constants = ["position_embeddings.weight"]
    if "token_type_embeddings" in module._modules:
        constants.append("token_type_embeddings.weight")
    return _in_place(
        module, (), {"forward": _text_embeddings, "reported_constants": tuple(constants)}
    )


def _heads(x: Tensor, head_dim: int) -> Tensor:
    """``(N, L, heads * d)`` -> ``(N, heads, L, d)``."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def _bert_attention(
    self: Any,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    size = self.attention_head_size
    q, k, v = (_heads(p(hidden_states), size) for p in (self.query, self.key, self.value))
    return self.attend(q, k, v, attention_mask, self.scaling, self.dropout.p), None


def _distilbert_attention(
    self: Any,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    size = self.attention_head_size
    q, k, v = (_heads(p(hidden_states), size) for p in (self.q_lin, self.k_lin, self.v_lin))
    out = self.attend(q, k, v, attention_mask, self.scaling, self.dropout.p)
    return self.out_lin(out), None


def _gpt2_attention(
    self: Any,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    qkv = self.c_attn(hidden_states).split(self.split_size, dim=2)
    q, k, v = (_heads(t, self.head_dim) for t in qkv)
    out = self.attend(q, k, v, attention_mask, self.scaling, self.attn_dropout.p)
    return self.resid_dropout(self.c_proj(out)), None


def _llama_attention(
    self: Any,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    attention_mask: Tensor | None = None,
    *args: Any,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    size = self.head_dim
    qkv, out = self.projections
    if len(qkv) == 1:  # Phi-3: one projection, the queries' heads then the keys' and values'
        fused = self.qkv_proj(hidden_states)
        kv = self.config.num_key_value_heads * size
        q, k, v = fused.split([fused.shape[-1] - 2 * kv, kv, kv], dim=-1)
    else:
        q, k, v = (getattr(self, name)(hidden_states) for name in qkv)
    norms = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
    per_head = norms[0] is not None and norms[0].weight.shape[0] == size
    if norms[0] is not None and not per_head:  # OLMo 2: RMS norms of the whole q and k
        q, k = norms[0](q), norms[1](k)
    q, k, v = (_heads(t, size) for t in (q, k, v))
    if per_head:  # Qwen3: RMS norms of each head's q and k
        q, k = norms[0](q), norms[1](k)
    if position_embeddings is None:
        raise ValueError(f"{type(self).__name__} needs its rotary position embeddings")
    # the model's own RoPE (queries and keys only), from the module that defines its class,
    # on the first dimensions of each head where it turns only those (Phi, StableLM)
    rotary = sys.modules[self._bcosify_original.__module__].apply_rotary_pos_emb
    turned = position_embeddings[0].shape[-1]
    if turned < size:
        (q, q_pass), (k, k_pass) = (
            q.split([turned, size - turned], -1),
            k.split([turned, size - turned], -1),
        )
        q, k = rotary(q, k, *position_embeddings)
        q, k = torch.cat([q, q_pass], -1), torch.cat([k, k_pass], -1)
    else:
        q, k = rotary(q, k, *position_embeddings)
    attended = self.attend(q, k, v, attention_mask, self.scaling, self.attention_dropout)
    return getattr(self, out)(attended), None


def _convert_projections(
    module: nn.Module, context: RuleContext, qkv: tuple[str, ...], out: tuple[str, ...] = ()
) -> None:
    """Queries, keys and values as the ``qkv_projection`` option says, the output projection
    by the rule table."""
    for name in qkv:
        layer = getattr(module, name)
        setattr(module, name, qkv_projection_rule(_as_linear(layer), context))
    for name in out:
        setattr(module, name, context.convert_child(getattr(module, name), name))


def _attention_rule(
    forward: Callable[..., Any], qkv: tuple[str, ...], out: tuple[str, ...] = ()
) -> Rule:
    def rule(module: nn.Module, context: RuleContext) -> nn.Module:
        if getattr(module, "is_cross_attention", False):
            raise UnsupportedModule("cross-attention is not converted (only self-attention)")
        _convert_projections(module, context, qkv, out)
        names = {"projections": (qkv, out[0] if out else None)}  # the forward reads them
        return _in_place(module, (TextAttention,), {"forward": forward, **names})

    return rule


def _as_linear(layer: nn.Module) -> nn.Module:
    """GPT-2's ``Conv1D`` (``x @ weight + bias``, weight ``(in, out)``) as the ``nn.Linear`` it
    is; any other module as it is."""
    if type(layer).__name__ != "Conv1D" or not type(layer).__module__.startswith("transformers"):
        return layer
    weight = layer.weight
    linear = nn.Linear(
        weight.shape[0], weight.shape[1], layer.bias is not None, weight.device, weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def conv1d(module: nn.Module, context: RuleContext) -> nn.Module:
    """GPT-2's ``Conv1D`` -> :class:`~bcosify.nn.BcosLinear` (its weight transposed).

    Example:
        >>> from transformers.pytorch_utils import Conv1D
        >>> from bcosify.convert import TextConversionOptions
        >>> context = RuleContext(TextConversionOptions(b=1.0, keep_bias=True), "c", lambda m, n: m)
        >>> layer, x = Conv1D(6, 4), torch.randn(2, 4)
        >>> torch.allclose(conv1d(layer, context)(x), layer(x), atol=1e-6)
        True
    """
    return linear_rule(_as_linear(module), context)


def _pooler_activation(module: nn.Module, context: RuleContext, what: str) -> nn.Module:
    """The activation of a pooler or head whose tanh has no dynamic-linear form: the identity,
    or the tanh itself under ``keep_bias`` (the equivalence check); the note says which."""
    label = f"'{context.path}' ({type(module).__name__})"
    if context.options.keep_bias:
        module.bcosify_notes = [
            f"{label}: {what} tanh kept (keep_bias=True: the equivalence check; the default "
            "conversion replaces it by the identity)"
        ]
        return nn.Tanh()
    module.bcosify_notes = [
        f"{label}: {what} tanh has no dynamic-linear form: replaced by the identity, as in B-cos "
        "LM (fine-tuning adapts the classifier to it)"
    ]
    return nn.Identity()


def pooler(module: nn.Module, context: RuleContext) -> nn.Module:
    """``BertPooler`` (first token, dense, tanh): dense a B-cos layer, tanh the identity."""
    module.dense = context.convert_child(module.dense, "dense")
    module.activation = _pooler_activation(module, context, "the pooler's")
    return _in_place(module, (), {})


def _roberta_head(self: nn.Module, features: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    x = self.activation(self.dense(self.dropout(features[:, 0])))
    return self.out_proj(self.dropout(x))


def roberta_head(module: nn.Module, context: RuleContext) -> nn.Module:
    """``RobertaClassificationHead`` (first token, dense, tanh, out_proj): dense and out_proj
    B-cos layers, tanh the identity (as the module ``activation``)."""
    module.dense = context.convert_child(module.dense, "dense")
    module.out_proj = context.convert_child(module.out_proj, "out_proj")
    module.activation = _pooler_activation(module, context, "the classification head's")
    return _in_place(module, (), {"forward": _roberta_head})


def rmsnorm(module: nn.Module, context: RuleContext) -> nn.Module:
    """``LlamaRMSNorm`` -> :class:`~bcosify.nn.BcosRMSNorm` (the root mean square detached when
    explaining; RMS norm has no bias)."""
    return BcosRMSNorm.from_rmsnorm(module, module.variance_epsilon)


def _rules() -> dict[type[nn.Module], Rule]:
    try:
        from transformers.activations import ReLUSquaredActivation, SiLUActivation
        from transformers.models.bert import modeling_bert as bert
        from transformers.models.distilbert import modeling_distilbert as distilbert
        from transformers.models.gpt2 import modeling_gpt2 as gpt2
        from transformers.models.llama import modeling_llama as llama
        from transformers.models.roberta import modeling_roberta as roberta
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return {}
    return {
        nn.Embedding: token_embedding,
        BcosTokenEmbedding: keep,
        BcosRMSNorm: keep,
        Conv1D: conv1d,
        SiLUActivation: activation(lambda m: BcosSiLU()),
        ReLUSquaredActivation: activation(lambda m: BcosSquaredReLU(torch.ones(1))),
        llama.LlamaRMSNorm: rmsnorm,
        bert.BertEmbeddings: text_embeddings,
        roberta.RobertaEmbeddings: text_embeddings,
        distilbert.Embeddings: text_embeddings,
        bert.BertSelfAttention: _attention_rule(_bert_attention, ("query", "key", "value")),
        roberta.RobertaSelfAttention: _attention_rule(_bert_attention, ("query", "key", "value")),
        distilbert.DistilBertSelfAttention: _attention_rule(
            _distilbert_attention, ("q_lin", "k_lin", "v_lin"), ("out_lin",)
        ),
        gpt2.GPT2Attention: _attention_rule(_gpt2_attention, ("c_attn",), ("c_proj",)),
        llama.LlamaAttention: _attention_rule(
            _llama_attention, ("q_proj", "k_proj", "v_proj"), ("o_proj",)
        ),
        bert.BertPooler: pooler,
        roberta.RobertaPooler: pooler,
        roberta.RobertaClassificationHead: roberta_head,
    }


FAMILY = Family(
    name="transformers_text",
    rules=_rules,
    prepare=traceable,
    supported=(
        Support(
            "transformers",
            "BertForSequenceClassification",
            "exact",
            "token, position and type embeddings; pooler tanh -> identity",
        ),
        Support(
            "transformers",
            "DistilBertForSequenceClassification",
            "exact",
            "token and position embeddings; first-token head",
        ),
        Support(
            "transformers",
            "RobertaForSequenceClassification",
            "exact",
            "positions counted from the padding index; head tanh -> identity",
        ),
        Support(
            "transformers",
            "GPT2ForSequenceClassification",
            "exact",
            "causal attention, Conv1D, last non-padding token",
        ),
        Support(
            "transformers",
            "LlamaForSequenceClassification",
            "exact",
            "RMSNorm, SwiGLU gates, RoPE and grouped-query attention on detached queries and keys",
        ),
        *(
            Support(
                "transformers",
                f"{name}ForSequenceClassification",
                "exact",
                f"found by structure (Llama's layout){note}; its forward checked against the "
                "original's at conversion",
            )
            for name, note in (
                ("Qwen2", ""),
                ("Qwen3", ", per-head query and key norms"),
                ("Mistral", ", sliding-window attention"),
                ("Olmo", ", layer norms without parameters"),
                ("Arcee", ", squared-ReLU MLP"),
                ("Gemma", ", token embeddings scaled by one number, RMS norms by 1 + weight"),
                ("Olmo2", ", query and key norms of the whole projections"),
                ("Olmo3", ", sliding-window and full layers with rotary embeddings of their own"),
                ("Gemma3Text", ", scaled token embeddings, per-head norms, two layer types"),
                ("Phi", ", rotary embeddings on part of each head, a parallel MLP"),
                ("Phi3", ", one fused query-key-value projection"),
                ("StableLm", ", rotary embeddings on part of each head"),
            )
        ),
        *(
            Support(
                "transformers",
                f"{name}ForSequenceClassification",
                "exact",
                f"found by structure ({like}'s layout); its forward checked against the "
                "original's at conversion",
            )
            for name, like in (("Camembert", "RoBERTa"), ("Ernie", "BERT"))
        ),
        *(
            Support(
                "transformers",
                f"{name}ForSequenceClassification",
                "exact",
                f"runs its own code{note}: modules swapped, its operations made dynamic "
                "linear while explained (bcosify.nn.DynamicLinearMode)",
            )
            for name, note in (
                ("Electra", ""),
                ("OPT", ", learned positions"),
                ("Bloom", ", ALiBi attention biases"),
                ("Mixtral", " (built as Llama is, but a mixture of experts)"),
            )
        ),
        Support(
            "transformers",
            "BartForSequenceClassification",
            "unsupported",
            "encoder-decoder classifiers: the tokens enter the encoder and, shifted, the decoder",
        ),
    ),
)
