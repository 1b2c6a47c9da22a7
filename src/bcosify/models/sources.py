"""Where pretrained models come from: ``"torchvision:<arch>"``, ``"timm:<arch>"``, CLIP models
(``"open_clip:<arch>"``, ``"hf:<folder>"``), local files.

Weights download only when the user names downloadable weights (a torchvision weight enum or
name, or ``weights="hub"`` for timm). A local file is read without executing code: safetensors,
or a state dict through ``torch.load(weights_only=True)``.

Every source declares the architecture arguments it accepts (:data:`SOURCES`), with types and
ranges: :func:`create` refuses any other by name, and a saved model's config is checked against
the same declaration before anything is built, so that no loader flag, file path, weight name
or hub id can reach a library from a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelSourceError
from ..schema import (
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    Boolean,
    Deferred,
    Field,
    FieldError,
    Integer,
    ListOf,
    Nullable,
    Number,
    Record,
    Text,
    image_size,
)
from ..serialization import load_state_dict_strictly, non_finite_entries

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SOURCES",
    "SOURCE_FIELDS",
    "Source",
    "SourceInfo",
    "check_source",
    "check_source_fields",
    "class_names_of",
    "create",
    "imagenet_class_names",
    "input_size_of",
    "load_state_dict_strictly",
    "load_weights",
    "register_source",
    "source_info",
    "timm_input_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHT_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


@dataclass(frozen=True)
class SourceInfo:
    """What bcosify knows about a model it created: enough to rebuild and to convert it.

    Attributes:
        name: the source name, e.g. ``"torchvision:resnet50"``.
        kwargs: the architecture's keyword arguments (JSON-serialisable), e.g. ``num_classes``.
        input_mean, input_std: the normalisation the weights were trained with.
        class_names: the class names of the weights, when known.
        input_size: the image size the weights were trained at, when known.
    """

    name: str
    kwargs: dict[str, Any]
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD
    class_names: list[str] | None = None
    input_size: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def source_info(model: nn.Module) -> SourceInfo | None:
    """The :class:`SourceInfo` of a model made by :func:`create`, or None.

    Example:
        >>> source_info(create("torchvision:resnet18", num_classes=3)).name
        'torchvision:resnet18'
    """
    info = getattr(model, "bcosify_source", None)
    return info if isinstance(info, SourceInfo) else None


def class_names_of(model: nn.Module) -> list[str] | None:
    """The class names a model carries, or None: a converted model's (its config's), else its
    source's (pretrained weights', or those a training run saved it with).

    Example:
        >>> class_names_of(create("torchvision:resnet18", num_classes=3)) is None
        True
    """
    config = getattr(model, "config", None)  # a BcosModel's ModelConfig
    names = getattr(config, "class_names", None)
    if names is None:
        info = source_info(model)
        names = info.class_names if info else getattr(model, "bcosify_class_names", None)
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def input_size_of(model: nn.Module) -> tuple[int, int] | None:
    """The image size a model was trained at or made for, when it records one: a converted
    model's config (a training run records the size it trained at), else its source's.

    Example:
        >>> input_size_of(create("torchvision:resnet18", weights=None)) is None
        True
    """
    config = getattr(getattr(model, "visual", model), "config", None)  # a B-cos (CLIP) model
    size = getattr(config, "input_size", None)
    if size is None:
        info = source_info(model)
        size = info.input_size if info else None
    return (int(size[0]), int(size[1])) if size else None


def imagenet_class_names(num_classes: int) -> list[str] | None:
    """ImageNet-1k's class names (torchvision's short, unique ones), for a classifier with
    1000 outputs; None for any other number.

    Pretrained weights of 1000 classes are ImageNet-1k's, in the standard order of its synsets,
    whichever library made them, so :func:`create` names the classes of a model loaded with
    such weights (``class_names_of`` reads them, ``bcosify explain`` and ``evaluate`` show them).

    Example:
        >>> imagenet_class_names(1000)[916], imagenet_class_names(10)
        ('web site', None)
    """
    if num_classes != 1000:
        return None
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def create(name: str, weights: Any = None, **kwargs: Any) -> nn.Module:
    """Build a model by source name, optionally with weights.

    Args:
        name: ``"torchvision:<arch>"`` (any ``torchvision.models`` classifier),
            ``"timm:<arch>"`` (when timm is installed), ``"bcosify:<arch>"`` (the small
            built-in architectures of :mod:`bcosify.models.architectures`), ``"open_clip:<arch>"``
            (an open_clip CLIP; ``pretrained=`` is accepted for ``weights``) or
            ``"hf:<folder>"`` (a transformers CLIP model saved in a local folder), see
            :mod:`bcosify.models.clip`.
        weights: None for random weights; a local file (``.safetensors``, or a state dict
            ``.pt``/``.pth``/``.bin`` loaded with ``weights_only=True``); for torchvision a weight
            enum member or its name (``"IMAGENET1K_V2"``, ``"DEFAULT"``,
            ``"ResNet50_Weights.IMAGENET1K_V2"``), which downloads when not cached; for timm
            ``"hub"`` for the hub weights, which downloads; for ``bcos:`` a checkpoint of the
            official zoo (its ``.pth`` state dict, read with ``weights_only=True``).
        **kwargs: architecture arguments such as ``num_classes``.

    The returned model carries a :class:`SourceInfo` (see :func:`source_info`), so that
    :func:`bcosify.convert` knows its input normalisation and the converted model can be saved
    and rebuilt.

    Example:
        >>> model = create("torchvision:resnet18", num_classes=10)
        >>> model.fc.out_features
        10
    """
    library, arch = _split_name(name)
    alias = SOURCES[library].weights_alias
    if alias in kwargs:
        if weights is not None:
            raise ModelSourceError(f"pass the weights file as weights= or as {alias}=, not both")
        weights = kwargs.pop(alias)
    try:
        kwargs = SOURCES[library].arguments.check(kwargs)
    except FieldError as error:
        raise ModelSourceError(
            f"{name}: {error}. bcosify passes only these checked arguments on; for others, "
            "build the model yourself and pass it to bcosify.convert"
        ) from None
    model, info = SOURCES[library].build(arch, weights, kwargs)
    model.bcosify_source = info  # type: ignore[assignment]
    return model


def _split_name(name: str) -> tuple[str, str]:
    library, sep, arch = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or not arch or library not in SOURCES:
        raise ModelSourceError(
            f"unknown model source {name!r}: use 'torchvision:<arch>', 'timm:<arch>', "
            "'bcosify:<arch>', 'bcos:<arch>', 'open_clip:<arch>' or 'hf:<local folder>', e.g. "
            "'torchvision:resnet50'"
        )
    return library, arch


SOURCE_FIELDS: dict[str, Field] = {
    "source": Nullable(Text(max_length=200)),
    "source_kwargs": Deferred(),
}
"""The fields a saved config names its source with; :func:`check_source_fields` checks the
arguments against the source's declaration."""


def check_source_fields(config: dict[str, Any]) -> None:
    """A :class:`~bcosify.schema.Record` rule: ``source_kwargs`` are arguments that
    ``source`` accepts (none without a source).

    Example:
        >>> check_source_fields({"source": None, "source_kwargs": {"pretrained": "x.pt"}})
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: source_kwargs: a model without a source takes no arguments
    """
    source, kwargs = config.get("source"), config.get("source_kwargs") or {}
    if source is None:
        if kwargs:
            raise FieldError("source_kwargs: a model without a source takes no arguments")
        return
    check_source(source, kwargs)


def check_source(name: Any, kwargs: Any) -> dict[str, Any]:
    """The architecture arguments ``kwargs`` of the source ``name`` as a saved config may hold
    them, checked; raises :class:`~bcosify.schema.FieldError` naming what is refused.

    Only sources that rebuild from data qualify: a config cannot name a folder to read
    (``"hf:<folder>"``), so a transformers model is saved as ``"transformers:<Class>"`` with its
    checked transformers config.

    Example:
        >>> check_source("torchvision:resnet18", {"num_classes": 3})
        {'num_classes': 3}
        >>> check_source("torchvision:resnet18", {"weights": "IMAGENET1K_V1"})
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: source_kwargs: unknown field 'weights' (known: ...)
    """
    if not isinstance(name, str) or name.partition(":")[0] == "hf":
        raise FieldError(f"source: {name!r} is not a source a config can name")
    try:
        library, arch = _split_name(name)
    except ModelSourceError as error:
        raise FieldError(f"source: {error}") from None
    _ARCHITECTURE.check(arch, "source")
    return SOURCES[library].arguments.check(kwargs, "source_kwargs")


def _is_file(weights: Any) -> bool:
    if isinstance(weights, Path):
        return True
    return isinstance(weights, str) and (
        weights.endswith(_WEIGHT_FILE_SUFFIXES) or "/" in weights or Path(weights).exists()
    )


def _torchvision(arch: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    import torchvision.models as tvm

    try:
        builder = tvm.get_model_builder(arch)
    except ValueError:
        available = ", ".join(tvm.list_models(module=tvm))
        raise ModelSourceError(
            f"torchvision has no model {arch!r}; classification models: {available}"
        ) from None
    name = f"torchvision:{arch}"
    if weights is None or _is_file(weights):
        model = builder(weights=None, **kwargs)
        if weights is None:
            return model, SourceInfo(name, dict(kwargs))
        load_weights(model, weights)
        names = imagenet_class_names(_outputs(model))
        return model, SourceInfo(name, dict(kwargs), class_names=names)
    enum = _torchvision_weights(arch, weights)
    classes = len(enum.meta["categories"])
    if kwargs.get("num_classes", classes) != classes:
        raise ModelSourceError(
            f"the {enum} weights have {classes} classes, not the {kwargs['num_classes']} "
            "asked for (the data's classes); pretrained weights keep their classifier, so use "
            "data of the same classes, or start from a weights file that fits"
        )
    try:
        model = builder(weights=enum, **kwargs)
    except OSError as error:  # urllib's errors are OSErrors: offline, or the server refused
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        raise ModelSourceError(
            f"the weights {enum} are not in the cache ({cache}) and could not be downloaded "
            f"({error}): download {enum.url} where there is internet, then pass the file "
            f"(--weights {Path(enum.url).name}, or weights='path/to/{Path(enum.url).name}'), "
            "or copy it to that cache path"
        ) from None
    transforms = enum.transforms()
    crop = getattr(transforms, "crop_size", None)
    return model, SourceInfo(
        name,
        {**dict(kwargs), "num_classes": len(enum.meta["categories"])},
        tuple(getattr(transforms, "mean", IMAGENET_MEAN)),
        tuple(getattr(transforms, "std", IMAGENET_STD)),
        list(enum.meta["categories"]),
        (crop[0], crop[0]) if crop else None,
    )


def _torchvision_weights(arch: str, weights: Any):  # type: ignore[no-untyped-def]
    import torchvision.models as tvm
    from torchvision.models import WeightsEnum

    if isinstance(weights, WeightsEnum):
        return weights
    enum_class = tvm.get_model_weights(arch)
    text = str(weights)
    member = text.split(".", 1)[1] if text.startswith(enum_class.__name__ + ".") else text
    if member == "DEFAULT":
        return enum_class.DEFAULT
    try:
        return enum_class[member]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum_class.__members__])
        raise ModelSourceError(
            f"{weights!r} is neither a weights file nor a weight of torchvision {arch!r} "
            f"({enum_class.__name__}: {names})"
        ) from None


def _timm(arch: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    try:
        import timm
    except ImportError:
        raise ModelSourceError("timm is not installed: pip install 'bcosify[timm]'") from None
    if not timm.is_model(arch):
        raise ModelSourceError(f"timm has no model {arch!r}; see timm.list_models()")
    if weights not in (None, "hub") and not _is_file(weights):
        raise ModelSourceError(
            f"timm weights must be None, 'hub' (downloads) or a local file, got {weights!r}"
        )
    name = f"timm:{arch}"
    model = timm.create_model(arch, pretrained=weights == "hub", **kwargs)
    if weights not in (None, "hub"):
        load_weights(model, weights)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return model, SourceInfo(
        name,
        dict(kwargs),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        None if weights is None else imagenet_class_names(getattr(model, "num_classes", 0)),
        timm_input_size(model),
    )


def timm_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The image size a timm model was built for: its patch embedding's (a vision transformer
    built with ``img_size``), else its ``pretrained_cfg``'s; None for other models.

    Example:
        >>> import timm
        >>> timm_input_size(timm.create_model("vit_tiny_patch16_224", img_size=64))
        (64, 64)
        >>> timm_input_size(timm.create_model("resnet18"))
        (224, 224)
    """
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (None,))[1:]
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return (size[0], size[1])
    return None


def _outputs(model: nn.Module) -> int:
    """The number of outputs of a torchvision classifier's last linear layer (0 if none)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else 0


def _builtin(arch: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    from .architectures import ARCHITECTURES

    if arch not in ARCHITECTURES:
        raise ModelSourceError(
            f"bcosify has no built-in model {arch!r}; built-in: {', '.join(ARCHITECTURES)}"
        )
    if weights is not None and not _is_file(weights):
        raise ModelSourceError(f"built-in models take a weights file or None, got {weights!r}")
    name = f"bcosify:{arch}"
    model = ARCHITECTURES[arch](**kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model, SourceInfo(name, dict(kwargs))


def _official(arch: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    from .official import build, official_state_dict

    if weights is not None and not _is_file(weights):
        raise ModelSourceError(
            f"bcos:{arch} takes a local checkpoint of the official B-cos v2 model zoo (the "
            f"torch.hub .pth file) or a safetensors file, or None; got {weights!r}"
        )
    unknown = sorted(set(kwargs) - {"num_classes"})
    if unknown:
        raise ModelSourceError(f"bcos:{arch} takes num_classes only, not {', '.join(unknown)}")
    name = f"bcos:{arch}"
    model = build(arch, **kwargs)
    if weights is not None:
        state = _unwrap_state_dict(_read_state_dict(Path(weights)), Path(weights))
        what = f"the official B-cos weights in {str(weights)!r}"
        load_state_dict_strictly(model, official_state_dict(model, state), what, ModelSourceError)
    classes = kwargs.get("num_classes", 1000)
    return model, SourceInfo(
        name,
        dict(kwargs),
        (0.0, 0.0, 0.0),  # the zoo's models take images in [0, 1], not normalised
        (1.0, 1.0, 1.0),
        _imagenet_classes() if classes == 1000 else None,
        (224, 224),
    )


def _imagenet_classes() -> list[str]:
    """The ImageNet class names in index order (shipped with torchvision, nothing downloads)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class Source:
    """A model library: how to build an architecture, and the arguments it accepts.

    Attributes:
        build: ``build(arch, weights, kwargs) -> (model, SourceInfo)``.
        arguments: the architecture arguments :func:`create` passes on (checked; any other is
            refused by name).
        weights_alias: the library's own name for ``weights`` (open_clip's ``pretrained``),
            which :func:`create` takes too.
    """

    build: Callable[[str, Any, dict[str, Any]], tuple[nn.Module, SourceInfo]]
    arguments: Field
    weights_alias: str | None = None


_ARCHITECTURE = Text(pattern=r"[A-Za-z0-9_.\-]+", max_length=100)
_NUM_CLASSES = Integer(1, MAX_CLASSES)
_RATE = Number(0.0, 1.0)
_WIDTH = Integer(1, 2**16)
_COUNT = Integer(1, 256)
_RATIO = Number(0.0, 64.0, positive=True)

_TORCHVISION = Record(
    {
        "num_classes": _NUM_CLASSES,
        "image_size": Integer(1, MAX_IMAGE_SIDE),  # ViTs
        "dropout": _RATE,
        "attention_dropout": _RATE,
        "stochastic_depth_prob": _RATE,
        "aux_logits": Boolean(),
        "init_weights": Nullable(Boolean()),
        "transform_input": Boolean(),
        "width_mult": Number(0.0, 16.0, positive=True),
    }
)
_TIMM = Record(
    {
        "num_classes": _NUM_CLASSES,
        "img_size": image_size(),
        "drop_rate": _RATE,
        "drop_path_rate": _RATE,
        "global_pool": Text(pattern=r"[a-z_]{0,16}"),
        "depth": _COUNT,
        "depths": ListOf(_COUNT, 1, 16),
        "embed_dim": _WIDTH,
        "embed_dims": ListOf(_WIDTH, 1, 16),
        "dims": ListOf(_WIDTH, 1, 16),
        "num_heads": _COUNT,
        "mlp_ratio": _RATIO,
        "patch_size": Integer(1, 256),
        "class_token": Boolean(),
        "reg_tokens": Integer(0, 64),
        "qkv_bias": Boolean(),
    }
)
SOURCES: dict[str, Source] = {
    "torchvision": Source(_torchvision, _TORCHVISION),
    "timm": Source(_timm, _TIMM),
    "bcosify": Source(
        _builtin, Record({"num_classes": _NUM_CLASSES, "widths": ListOf(_WIDTH, 1, 16)})
    ),
    "bcos": Source(_official, Record({"num_classes": _NUM_CLASSES})),
}
"""Every model library, by the prefix of its source names, with the arguments it accepts; the
CLIP sources (``open_clip``, ``hf``, ``transformers``) register themselves from
:mod:`bcosify.models.clip` (:func:`register_source`)."""


def register_source(prefix: str, source: Source) -> None:
    """Make ``"<prefix>:<arch>"`` a source name :func:`create` builds with ``source``.

    Example:
        >>> from bcosify.schema import Record
        >>> register_source("tiny", Source(lambda arch, weights, kwargs: (
        ...     torch.nn.Linear(2, 2), SourceInfo(f"tiny:{arch}", kwargs)), Record({})))
        >>> create("tiny:linear").out_features
        2
        >>> del SOURCES["tiny"]
    """
    if prefix in SOURCES:
        raise ValueError(f"the source {prefix!r} is registered already")
    SOURCES[prefix] = source


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model``, strictly, without executing pickled code.

    Accepts safetensors files and state dicts saved with ``torch.save`` (also wrapped as
    ``{"state_dict": ...}`` or ``{"model": ...}``, and with DDP's ``module.`` prefix).

    Example:
        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> net = torch.nn.Linear(2, 2)
        >>> path = tempfile.mkdtemp() + "/w.safetensors"
        >>> save_file(net.state_dict(), path)
        >>> load_weights(torch.nn.Linear(2, 2), path)
    """
    path = Path(path)
    state = _unwrap_state_dict(_read_state_dict(path), path)
    bad = non_finite_entries(state)
    if bad:
        raise ModelSourceError(
            f"the weights in {str(path)!r} hold NaN or infinite values ({', '.join(bad[:5])}): "
            "they come from a run that diverged; use finite weights"
        )
    load_state_dict_strictly(model, state, f"the weights in {str(path)!r}", ModelSourceError)


def _read_state_dict(path: Path) -> Any:
    """What a weights file holds: safetensors, or ``torch.load(weights_only=True)``."""
    if not path.is_file():
        raise ModelSourceError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelSourceError(
            f"could not read weights from {str(path)!r}: {type(error).__name__}: {error}. "
            "Use a safetensors file or a state dict saved with torch.save(model.state_dict())."
        ) from None


def _unwrap_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
