"""Converting transformers text classifiers.

:func:`bcosify.convert` hands a sequence classifier to :func:`convert_text`. For one the text
family knows (BERT, DistilBERT, RoBERTa, GPT-2, Llama, and those built as they are:
:mod:`bcosify.convert.families.transformers_text`), the model's own module tree is converted in
place as for images (:mod:`bcosify.convert.tree`), after its classifier, base model and encoder
stack were switched to forwards on tensors. The explained signal starts at the token ids; the
attention mask and the token-type ids are other tensors (they shape the attention matrix and
select constants); the token embedding's output is the explained input. Any other classifier
runs its own code, its modules swapped and its operations made dynamic linear while it is
explained (:mod:`bcosify.convert.text_swaps`); encoder-decoders are refused.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Literal

import torch
from torch import fx, nn

from ..device import device_of
from ..errors import ConversionError
from ..models.transformers_config import build_model
from ..serialization import load_pretrained
from .families import prepare, traced_methods
from .families.transformers_text import (
    ARCHITECTURES,
    structural_attention,
    structural_rules,
    text_architecture,
)
from .graph import GraphProblems
from .report import ConversionReport, logit_bias_constant, logit_bias_value, record_tree
from .rules import Rule, UnsupportedModule
from .table import rule_table
from .text_model import BcosTextModel, TextConversionOptions, TextModelConfig, read_text_config
from .text_swaps import swap_modules
from .tracing import CallInfo
from .tree import convert_tree

__all__ = ["convert_text", "is_text_classifier", "load_text"]


def is_text_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers sequence classifier, which :func:`bcosify.convert`
    hands to :func:`convert_text` (which converts it, or refuses it with its reason, rather
    than treating it as an image model).

    Example:
        >>> import torch
        >>> is_text_classifier(torch.nn.Linear(2, 2))
        False
    """
    cls = getattr(type(model), "_bcosify_original", type(model))
    return text_architecture(model) is not None or (
        cls.__module__.startswith("transformers.")
        and cls.__name__.endswith("ForSequenceClassification")
    )


def convert_text(
    model: nn.Module,
    *,
    b: float = 2.0,
    keep_bias: bool = False,
    activations: Literal["keep", "identity"] = "keep",
    qkv_projection: Literal["linear", "bcos"] = "linear",
    logit_bias: float | Literal["auto"] | None = "auto",
    rules: dict[type[nn.Module], Rule] | None = None,
    class_names: list[str] | None = None,
) -> tuple[BcosTextModel, Any]:
    """Convert a transformers sequence classifier into a :class:`BcosTextModel`.

    :func:`bcosify.convert` calls this for text models (same options, see
    :class:`TextConversionOptions`); the original is not modified.

    Raises:
        ConversionError: listing every module and operation without a dynamic-linear form.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> original = BertForSequenceClassification(config).eval()
        >>> same, report = convert_text(original, b=1.0, keep_bias=True)
        >>> ids, mask = torch.tensor([[2, 7, 9, 0]]), torch.tensor([[1, 1, 1, 0]])
        >>> reference = original(input_ids=ids, attention_mask=mask).logits
        >>> bool((same(ids, mask) - reference).abs().max() < 1e-5)
        True
    """
    options = TextConversionOptions(b, keep_bias, activations, qkv_projection, logit_bias)
    return _convert(model, options, rules, class_names)


def _convert(
    model: nn.Module,
    options: TextConversionOptions,
    rules: dict[type[nn.Module], Rule] | None,
    class_names: list[str] | None,
    own_code: bool | None = None,
) -> tuple[BcosTextModel, Any]:
    """:func:`convert_text`; ``own_code`` (a saved model's) forces the way, else it is chosen:
    a known or structure-found classifier's forward on tensors where it converts, else the
    classifier's own code."""
    if not is_text_classifier(model):
        raise ConversionError(
            f"{type(model).__name__} is not a text classifier bcosify converts (a transformers "
            "...ForSequenceClassification model)"
        )
    architecture = None if own_code else text_architecture(model)
    if architecture is None:
        return _convert_own_code(model, options, rules, class_names)
    try:
        return _convert_known(model, architecture, options, rules, class_names, own_code is None)
    except ConversionError as error:
        if architecture.name in ARCHITECTURES or own_code is not None:
            raise
        # found by structure, but not all of it converts as its look-alike's would (a
        # mixture of experts, another norm): its own code runs instead
        why = str(error).splitlines()[0]
        return _convert_own_code(model, options, rules, class_names, why)


def _convert_known(
    model: nn.Module,
    architecture: Any,
    options: TextConversionOptions,
    rules: dict[type[nn.Module], Rule] | None,
    class_names: list[str] | None,
    check: bool = True,
) -> tuple[BcosTextModel, Any]:
    """A classifier a family knows, or found by structure: its forward on tensors (for one
    found by structure, checked against the original's unless rebuilt from a saved model),
    its module tree converted as for images."""
    table = rule_table({**structural_rules(model), **(rules or {})})
    report = ConversionReport(type(model).__name__)
    network = copy.deepcopy(model).eval()
    report.notes += prepare(network)
    if architecture.name not in ARCHITECTURES and check:
        report.notes.append(_check_forward(model, network, architecture))
    problems = GraphProblems()
    tree = convert_tree(
        network, table, options, problems, traced_methods, root=_root_call(network, architecture)
    )
    record_tree(report, tree, network, model, problems)
    return _assemble(
        model, network, options, report, class_names, architecture.name, architecture.token_types
    )


def _convert_own_code(
    model: nn.Module,
    options: TextConversionOptions,
    rules: dict[type[nn.Module], Rule] | None,
    class_names: list[str] | None,
    why: str | None = None,
) -> tuple[BcosTextModel, Any]:
    """A classifier no family knows (or one found by structure that does not convert as its
    look-alike, ``why``): its modules swapped, its own code run
    (:mod:`bcosify.convert.text_swaps`)."""
    if options.activations != "keep":
        raise ConversionError(
            f"{type(model).__name__} runs its own code, whose activations are not modules to "
            "replace: convert it with activations='keep'"
        )
    report = ConversionReport(type(model).__name__)
    if why is not None:
        report.notes.append(f"not converted as found by structure ({why}): its own code runs")
    network = copy.deepcopy(model).eval()
    try:
        swap_modules(network, options, report, rules)
    except UnsupportedModule as error:
        raise ConversionError(f"cannot convert {type(model).__name__}: {error}") from None
    name = getattr(type(model), "_bcosify_original", type(model)).__name__
    token_types = "token_type_ids" in inspect.signature(type(model).forward).parameters
    return _assemble(model, network, options, report, class_names, name, token_types, True)


def _assemble(
    model: nn.Module,
    network: nn.Module,
    options: TextConversionOptions,
    report: ConversionReport,
    class_names: list[str] | None,
    architecture: str,
    token_types: bool,
    own_code: bool = False,
) -> tuple[BcosTextModel, Any]:
    """The converted ``network`` as a :class:`BcosTextModel` with its config and logit bias,
    on the original's device."""
    hf_config = model.config
    num_classes = int(hf_config.num_labels)
    bias = logit_bias_value(options, num_classes)
    config = TextModelConfig(
        options,
        architecture,
        hf_config.to_dict(),
        class_names or _class_names(hf_config),
        token_types,
        getattr(hf_config, "pad_token_id", None),
        own_code,
    )
    converted = BcosTextModel(network, config, bias).to(device_of(model))
    if bias is not None:
        report.constants.append(logit_bias_constant(options, bias, num_classes))
    return converted.eval(), report


def _check_forward(original: nn.Module, network: nn.Module, architecture: Any) -> str:
    """Check that the forward on tensors that a classifier found by structure got, with the
    attention forward its rule will give, computes the original's logits (on random token ids,
    with padding); returns a note.

    Raises:
        ConversionError: naming the largest difference, if it does not.
    """
    vocab = original.get_input_embeddings().num_embeddings
    pad = getattr(original.config, "pad_token_id", None)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 6), generator=generator)
    mask = torch.ones_like(ids)
    if pad is not None:  # transformers finds a decoder's last token by the padding token
        ids[ids == pad] = (pad + 1) % vocab
        ids[1, 4:], mask[1, 4:] = pad, 0
    device = device_of(original)
    ids, mask = ids.to(device), mask.to(device)
    was = original.training
    try:
        with torch.no_grad():
            reference = original.eval()(input_ids=ids, attention_mask=mask).logits
            with structural_attention(network):
                found = network(ids, mask)
    except Exception as error:
        raise ConversionError(
            f"{architecture.name} is built like {_like(architecture)}, but its forward could not "
            f"be run as {_like(architecture)}'s ({type(error).__name__}: {error}); load your "
            f"checkpoint into a supported class ({', '.join(ARCHITECTURES)})"
        ) from error
    finally:
        original.train(was)
    error = float((found - reference).abs().max())
    if not error <= 1e-4 * max(float(reference.abs().max()), 1e-6):
        raise ConversionError(
            f"{architecture.name} is built like {_like(architecture)}, but computes something "
            f"else (its logits differ by {error:.3g} from {_like(architecture)}'s computation on "
            "the same weights: embedding scaling, norms or attention of its own); it is not "
            "converted"
        )
    return (
        f"{architecture.name}: found by structure ({_like(architecture)}'s layout); its forward "
        f"on tensors computes the original's logits (largest difference {error:.2g} on random "
        "tokens)"
    )


def _like(architecture: Any) -> str:
    """The known classifier an architecture found by structure is built like."""
    return "Llama" if architecture.causal else "BERT"


def _root_call(network: nn.Module, architecture: Any) -> CallInfo:
    """The classifier's call: the token ids the signal, the masks other tensors."""
    graph = fx.Graph()
    names = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if architecture.token_types else []
    )
    nodes = tuple(graph.placeholder(name) for name in names)
    info = CallInfo()
    info.add(type(network).forward, nodes, {}, {nodes[0]})
    return info


def _class_names(hf_config: Any) -> list[str] | None:
    """The labels of a config whose ``id2label`` was set (not the default ``LABEL_i``)."""
    labels = getattr(hf_config, "id2label", None) or {}
    names = [str(labels[i]) for i in sorted(labels, key=int)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def load_text(directory: str | Path) -> BcosTextModel:
    """Load a text model saved with :meth:`BcosTextModel.save_pretrained` (no pickles).

    The original architecture is rebuilt from the saved transformers config, checked field by
    field (:mod:`bcosify.models.transformers_config`; nothing is downloaded and nothing is
    passed to ``from_pretrained``), converted with the saved options, and the weights are
    loaded strictly once their header fits the model built on the ``meta`` device.
    :func:`bcosify.load` calls this for text models.
    """
    config = read_text_config(directory)
    options = config.options

    def build() -> BcosTextModel:
        original = build_model(config.architecture, config.hf_config)
        rebuilt, _ = _convert(original, options, None, config.class_names, config.own_code)
        rebuilt.config = config
        return rebuilt

    return load_pretrained(directory, build).eval()
