"""``bcosify.convert``: a pretrained model in, a B-cos model and a report out."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from torch import nn

from ..device import device_of
from ..errors import ConversionError, OptionsError
from ..models.sources import source_info
from ..nn import BcosConv2d, BcosLinear
from .calibrate import Images
from .calibrate import calibrate as calibrate_model
from .encoding import encode_first_layer
from .families import image_tower, prepare, traced_methods
from .graph import GraphProblems
from .model import BcosModel, ModelConfig
from .options import ConversionOptions
from .rules import Rule
from .table import default_rules
from .text import convert_text, is_text_classifier
from .text_model import BcosTextModel
from .tracing import TraceFailure, trace_method
from .tree import TreeConversion, convert_tree, root_call

__all__ = ["Conversion", "ConversionReport", "Replacement", "convert"]


@dataclass(frozen=True)
class Replacement:
    """One module of the original and what it became."""

    path: str
    old: str
    new: str


@dataclass
class ConversionReport:
    """What a conversion did: every module replaced or kept, every constant, every rewrite.

    ``str(report)`` is a readable summary; the lists hold the details.
    """

    model: str
    replaced: list[Replacement] = field(default_factory=list)
    kept: list[Replacement] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many modules went from each type to each, e.g. ``{"Conv2d -> BcosConv2d": 20}``."""
        counts: dict[str, int] = {}
        for item in self.replaced:
            key = f"{item.old} -> {item.new}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def __str__(self) -> str:
        lines = [
            f"Converted {self.model}: {len(self.replaced)} modules replaced, "
            f"{len(self.kept)} kept as they are."
        ]
        lines += [f"  {n:4d} x {key}" for key, n in sorted(self.counts().items())]
        kept: dict[str, int] = {}
        for item in self.kept:
            kept[item.old] = kept.get(item.old, 0) + 1
        if kept:
            lines.append(
                "  kept (already dynamic linear): "
                + ", ".join(f"{n} x {name}" for name, n in sorted(kept.items()))
            )
        lines += ["Constants:"] + [f"  {c}" for c in self.constants or ["none"]]
        lines += ["Notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines)


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
    RoBERTa, GPT-2 and Llama) convert to a :class:`~bcosify.convert.BcosTextModel` that takes
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
        given = [name for name, set_ in image_only.items() if set_]
        if given:
            raise OptionsError(
                f"{', '.join(given)} apply to image models; {type(model).__name__} is a text "
                "classifier (see bcosify.convert.TextConversionOptions)"
            )
        model, report = convert_text(
            model,
            b=b,
            keep_bias=keep_bias,
            activations=activations,
            qkv_projection=qkv_projection,
            logit_bias=logit_bias,
            rules=rules,
            class_names=class_names,
        )
        return Conversion(model, report)  # type: ignore[arg-type]
    info = source_info(model)
    if input_mean is None or input_std is None:
        if info is None:
            raise ConversionError(
                "pass input_mean and input_std: the per-channel normalisation the model was "
                "trained with (ImageNet: (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225))"
            )
        input_mean = input_mean if input_mean is not None else info.input_mean
        input_std = input_std if input_std is not None else info.input_std
    options = ConversionOptions(
        input_mean=tuple(input_mean),
        input_std=tuple(input_std),
        b=b,
        encoding=encoding,
        keep_bias=keep_bias,
        maxpool=maxpool,
        activations=activations,
        classifier_before_pool=classifier_before_pool,
        logit_bias=logit_bias,
        qkv_projection=qkv_projection,
    )
    table = {**default_rules(), **(rules or {})}
    report = ConversionReport(type(model).__name__)

    network = copy.deepcopy(model).eval()
    tower = image_tower(network)
    if tower is not None:  # a CLIP model or image tower: it outputs embeddings, not logits
        network, note = tower
        report.notes.append(note)
    report.notes += prepare(network)
    problems = GraphProblems()
    method, fixed = traced_methods(network, "")[0]
    call = root_call(network, method)
    try:
        first = trace_method(network, "", method, {**call.variants()[0], **fixed}, call.signal)
    except TraceFailure as error:
        raise ConversionError(
            f"torch.fx could not trace {type(network).__name__}.{method}: {error}\n"
            "Its code probably branches on tensor values. Give the model a rule "
            "(convert(..., rules={TheModule: rule})) so that it is converted as a whole."
        ) from error
    report.notes.append(
        encode_first_layer(first, options, problems, info.input_size if info else None)
    )
    tree = convert_tree(network, table, options, problems, traced_methods)
    record_tree(report, tree, network, model, problems)
    num_classes = _num_classes(network, tree.leaves)

    embedding = tower is not None and logit_bias == "auto"
    bias = None if embedding else _logit_bias(options, num_classes)
    config = ModelConfig(
        options,
        info.name if info else None,
        dict(info.kwargs) if info else {},
        class_names or (info.class_names if info else None),
        info.input_size if info else None,
    )
    converted = BcosModel(network, config, bias).to(device_of(model))
    if options.encoding == "paper":
        report.constants.append(
            "normalization.offset: the mean subtraction of the 'paper' "
            "encoding (an affine offset, reported per example)"
        )
    if bias is not None:
        report.constants.append(
            f"logit_bias.bias = {bias:.4f} (-log(C - 1) for C = {num_classes})"
            if options.logit_bias == "auto"
            else f"logit_bias.bias = {bias:.4f}"
        )
    if calibrate is not None:
        report.notes.append(str(calibrate_model(converted, calibrate)))
    return Conversion(converted.eval(), report)


def record_tree(
    report: ConversionReport,
    tree: TreeConversion,
    network: nn.Module,
    model: nn.Module,
    problems: GraphProblems,
) -> None:
    """Add what :func:`convert_tree` did to ``report``; raise if anything could not convert.

    Raises:
        ConversionError: listing every module and operation without a dynamic-linear form.
    """
    report.notes += tree.notes
    report.constants += [f"network.{line}" for line in tree.constants]
    report.replaced += [Replacement(*entry) for entry in tree.replaced]
    report.kept += [Replacement(*entry) for entry in tree.kept]
    if tree.rewritten:
        report.notes.append(
            "rewritten code (everything else keeps its own): "
            + ", ".join(
                f"{path or type(network).__name__}.{'/'.join(names)}"
                for path, names in tree.rewritten.items()
            )
        )
    if problems.lines:
        raise ConversionError(
            f"cannot convert {type(model).__name__}: {len(problems.lines)} part(s) have no "
            "dynamic-linear form:\n" + "\n".join(problems.lines) + "\nFor a module type, add a "
            "rule: bcosify.convert(model, rules={TheType: rule}) where rule(module, context) "
            "returns its B-cos replacement (or the module itself, if it is already dynamic "
            "linear: bcosify.convert.rules.keep). Wrap a functional call in a module to give it "
            "a rule."
        )
    report.constants += _reported_constants(network)
    # notes that modules made by rules leave (a pooler whose tanh became the identity)
    report.notes += [n for _, m in network.named_modules() for n in getattr(m, "bcosify_notes", ())]


def _reported_constants(network: nn.Module) -> list[str]:
    """The constants that modules made by rules report themselves (``reported_constants``)."""
    return [
        f"network.{path}.{name}: added to the signal in '{path}' ({type(module).__name__})"
        for path, module in network.named_modules()
        for name in getattr(module, "reported_constants", ())
    ]


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


def _logit_bias(options: ConversionOptions, num_classes: int | None) -> float | None:
    if options.logit_bias is None or (options.logit_bias == "auto" and options.keep_bias):
        return None
    if options.logit_bias != "auto":
        return float(options.logit_bias)
    if num_classes is None or num_classes < 2:
        raise ConversionError(
            "logit_bias='auto' needs the number of classes, which could not be read off the "
            "last layer; pass logit_bias=<value> or logit_bias=None"
        )
    return -math.log(num_classes - 1)
