"""``bcosify.convert``: a pretrained model in, a B-cos model and a report out."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from torch import nn

from ..device import device_of
from ..errors import ConversionError, OptionsError
from ..models.sources import SourceInfo, source_info
from ..nn import BcosConv2d, BcosLinear
from .calibrate import Images
from .calibrate import calibrate as calibrate_model
from .encoding import encode_first_layer
from .examples import Examples
from .families import image_tower, model_input_size, prepare, traced_methods
from .graph import GraphProblems
from .model import BcosModel, ModelConfig
from .options import ConversionOptions
from .report import (
    ConversionReport,
    Replacement,
    logit_bias_constant,
    logit_bias_value,
    record_tree,
)
from .rules import Rule
from .table import rule_table
from .text import convert_text, is_text_classifier
from .text_model import BcosTextModel
from .tracing import TraceFailure, trace_method
from .tree import convert_tree, root_call

__all__ = ["Conversion", "ConversionReport", "Replacement", "convert"]


class Conversion(NamedTuple):
    """The result of :func:`convert`: unpack it as ``model, report = convert(...)``."""

    model: BcosModel | BcosTextModel
    report: ConversionReport


def convert(
    model: nn.Module,
    *,
    input_mean: tuple[float, ...] | list[float] | None = None,
    input_std: tuple[float, ...] | list[float] | None = None,
    b: float = 2.0,
    encoding: Literal["fold", "paper"] = "fold",
    keep_bias: bool = False,
    maxpool: Literal["keep", "avg"] = "keep",
    activations: Literal["keep", "identity"] = "keep",
    classifier_before_pool: bool = True,
    logit_bias: float | Literal["auto"] | None = "auto",
    qkv_projection: Literal["linear", "bcos"] = "linear",
    rules: dict[type[nn.Module], Rule] | None = None,
    class_names: list[str] | None = None,
    calibrate: Images | None = None,
    input_size: tuple[int, int] | None = None,
) -> Conversion:
    """Convert a pretrained model into a B-cos model with the same weights.

    The original is not modified. Every ``Conv2d`` and ``Linear`` becomes the B-cos layer with
    the same weights, biases are removed, batch norm becomes uncentered (its mean folded away),
    layer and group norms lose their bias, activations and gates get their dynamic-linear
    forms, the first layer is re-weighted for the ``[x, 1 - x]`` input, and a logit bias is
    added (see :class:`ConversionOptions` for each option). The converted model takes RGB images
    in ``[0, 1]``.

    Vision transformers (torchvision, timm): attention (``nn.MultiheadAttention`` or
    ``F.scaled_dot_product_attention``) gets detached queries and keys in explanation mode, its
    query/key/value projections are converted as ``qkv_projection`` says, and the positional
    embedding and class, distillation and register tokens stay, reported by name as constant
    terms of every explanation (``report.constants``).

    Text classifiers (transformers ``AutoModelForSequenceClassification`` of BERT, DistilBERT,
    RoBERTa, GPT-2, Llama, and decoders built as Llama is, found by structure: Qwen2, Qwen3,
    Mistral, ...) convert to a :class:`~bcosify.convert.BcosTextModel` that takes
    token ids (see :func:`bcosify.convert.text.convert_text`); the image options
    (``input_mean``, ``input_std``, ``encoding``, ``maxpool``, ``classifier_before_pool``,
    ``calibrate``) do not apply to them.

    CLIP models (open_clip ``CLIP``, transformers ``CLIPModel``) and their image towers (open_clip
    ``ModifiedResNet`` with its attention pooling and ``VisionTransformer``, transformers
    ``CLIPVisionModel``) convert to their image tower, which outputs image embeddings and gets
    no logit bias under ``"auto"``; :func:`bcosify.convert.convert_clip` keeps the text tower
    beside it. A matrix product of the signal with a parameter (open_clip's ``x @ proj``)
    becomes a linear layer and then a B-cos layer.

    Args:
        model: the pretrained model, in any state; models from :func:`bcosify.models.create`
            know their ``input_mean``/``input_std``, others must be given them.
        rules: extra or overriding entries of the rule table, ``{ModuleType: rule}``, where
            ``rule(module, context)`` returns the replacement (see :mod:`bcosify.convert.rules`).
        class_names: stored with the model (defaults to the source's, when known).
        calibrate: images in ``[0, 1]`` (a tensor, dataset or batches; labels unused) to
            rescale the converted model on with :func:`bcosify.calibrate` (method ``"auto"``),
            so that it is usable in evaluation mode before fine-tuning.
        input_size: the image size ``(height, width)`` the model runs at (default: the
            source's, or timm's ``pretrained_cfg``). Only code that branches on the input's
            size needs it: such code is traced on an example of this size, with a guard that
            names it when the model later runs at a size where it would branch differently.

    Raises:
        ConversionError: listing every module and operation without a dynamic-linear form.

    Example:
        >>> import torch, bcosify
        >>> original = bcosify.models.create("torchvision:resnet18", num_classes=5).eval()
        >>> same, _ = bcosify.convert(original, b=1.0, keep_bias=True)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        >>> reference = original((x - mean[:, None, None]) / std[:, None, None])
        >>> bool((same.eval()(x) - reference).abs().max() < 1e-4)
        True
    """
    if is_text_classifier(model):
        image_only = {
            "input_mean": input_mean is not None,
            "input_std": input_std is not None,
            "encoding": encoding != "fold",
            "maxpool": maxpool != "keep",
            "classifier_before_pool": not classifier_before_pool,
            "calibrate": calibrate is not None,
        }
        return _convert_text(model, image_only, b, keep_bias, activations, qkv_projection,
                             logit_bias, rules, class_names)  # fmt: skip
    info = source_info(model)
    options = ConversionOptions(
        *_normalisation(info, input_mean, input_std),
        b=b,
        encoding=encoding,
        keep_bias=keep_bias,
        maxpool=maxpool,
        activations=activations,
        classifier_before_pool=classifier_before_pool,
        logit_bias=logit_bias,
        qkv_projection=qkv_projection,
    )
    report = ConversionReport(type(model).__name__)
    network, tower = _network(model, report)
    size = input_size or (info.input_size if info else None) or model_input_size(network)
    examples = Examples(
        lambda: _network(model, ConversionReport(report.model))[0],
        size,
        len(options.input_mean),
        lambda module, path: [name for name, _ in traced_methods(module, path)],
    )
    problems = GraphProblems()
    _encode_input(network, options, problems, report, info, examples)
    tree = convert_tree(
        network, rule_table(rules), options, problems, traced_methods, examples=examples
    )
    record_tree(report, tree, network, model, problems)
    num_classes = _num_classes(network, tree.leaves)
    # a CLIP model or image tower outputs embeddings, not logits: no logit bias by default
    bias = None if tower and logit_bias == "auto" else logit_bias_value(options, num_classes)
    config = ModelConfig(
        options,
        info.name if info else None,
        dict(info.kwargs) if info else {},
        class_names or (info.class_names if info else None),
        # a model traced at the example's size is made for it (its guards say so)
        size if examples.ran else input_size or (info.input_size if info else None),
    )
    converted = BcosModel(network, config, bias).to(device_of(model))
    if options.encoding == "paper":
        report.constants.append(
            "normalization.offset: the mean subtraction of the 'paper' "
            "encoding (an affine offset, reported per example)"
        )
    if bias is not None:
        report.constants.append(logit_bias_constant(options, bias, num_classes))
    if calibrate is not None:
        report.notes.append(str(calibrate_model(converted, calibrate)))
    return Conversion(converted.eval(), report)


def _convert_text(
    model: nn.Module,
    image_only: dict[str, bool],
    b: float,
    keep_bias: bool,
    activations: Any,
    qkv_projection: Any,
    logit_bias: Any,
    rules: dict[type[nn.Module], Rule] | None,
    class_names: list[str] | None,
) -> Conversion:
    """A text classifier, through :func:`convert_text`; image options are refused by name."""
    given = [name for name, set_ in image_only.items() if set_]
    if given:
        raise OptionsError(
            f"{', '.join(given)} apply to image models; {type(model).__name__} is a text "
            "classifier (see bcosify.convert.TextConversionOptions)"
        )
    converted, report = convert_text(
        model,
        b=b,
        keep_bias=keep_bias,
        activations=activations,
        qkv_projection=qkv_projection,
        logit_bias=logit_bias,
        rules=rules,
        class_names=class_names,
    )
    return Conversion(converted, report)


def _normalisation(
    info: SourceInfo | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input normalisation: the arguments, else the source's."""
    if mean is None or std is None:
        if info is None:
            raise ConversionError(
                "pass input_mean and input_std: the per-channel normalisation the model was "
                "trained with (ImageNet: (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225))"
            )
        mean = mean if mean is not None else info.input_mean
        std = std if std is not None else info.input_std
    return tuple(mean), tuple(std)


def _network(model: nn.Module, report: ConversionReport) -> tuple[nn.Module, bool]:
    """A copy of the model to convert in place (its image tower, for a CLIP model), its
    family's preparation done; and whether it is an image tower."""
    network = copy.deepcopy(model).eval()
    tower = image_tower(network)
    if tower is not None:
        network, note = tower
        report.notes.append(note)
    report.notes += prepare(network)
    return network, tower is not None


def _encode_input(
    network: nn.Module,
    options: ConversionOptions,
    problems: GraphProblems,
    report: ConversionReport,
    info: SourceInfo | None,
    examples: Examples,
) -> None:
    """Fold the ``[x, 1 - x]`` encoding into the first layer(s) that take the input."""
    method, fixed = traced_methods(network, "")[0]
    call = root_call(network, method)
    concrete = {**call.variants()[0], **fixed}
    try:
        first = trace_method(network, "", method, concrete, call.signal, examples)
    except TraceFailure as error:
        raise ConversionError(
            f"torch.fx could not trace {type(network).__name__}.{method}: {error}\n"
            "Its code probably branches on tensor values. Give the model a rule "
            "(convert(..., rules={TheModule: rule})) so that it is converted as a whole."
        ) from error
    report.notes.append(
        encode_first_layer(first, options, problems, info.input_size if info else None)
    )


def _num_classes(network: nn.Module, leaves: list[str]) -> int | None:
    """Output size of the last linear layer or convolution called: the classifier's."""
    for path in reversed(leaves):
        module = network.get_submodule(path)
        module = getattr(module, "layer", module)  # Biased (keep_bias=True)
        if isinstance(module, (nn.Linear, BcosLinear)):
            return module.out_features
        if isinstance(module, (nn.Conv2d, BcosConv2d)):
            return module.out_channels
    return None
