"""Where pretrained models come from: ``"torchvision:<arch>"``, ``"timm:<arch>"``, CLIP models
(``"open_clip:<arch>"``, ``"hf:<folder>"``), local files.

Weights download only when the user names downloadable weights (a torchvision weight enum or
name, or ``weights="hub"`` for timm). A local file is read without executing code: safetensors,
or a state dict through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelSourceError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SourceInfo",
    "class_names_of",
    "create",
    "imagenet_class_names",
    "load_weights",
    "source_info",
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
    library, sep, arch = name.partition(":")
    if not sep or not arch or library not in _LIBRARIES:
        raise ModelSourceError(
            f"unknown model source {name!r}: use 'torchvision:<arch>', 'timm:<arch>', "
            "'bcosify:<arch>', 'bcos:<arch>', 'open_clip:<arch>' or 'hf:<local folder>', e.g. "
            "'torchvision:resnet50'"
        )
    model, info = _LIBRARIES[library](arch, weights, kwargs)
    model.bcosify_source = info  # type: ignore[assignment]
    return model


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
    json_kwargs = _json_kwargs(kwargs, name)
    if weights is None or _is_file(weights):
        model = builder(weights=None, **kwargs)
        if weights is None:
            return model, SourceInfo(name, json_kwargs)
        load_weights(model, weights)
        names = imagenet_class_names(_outputs(model))
        return model, SourceInfo(name, json_kwargs, class_names=names)
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
        {**json_kwargs, "num_classes": len(enum.meta["categories"])},
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
    json_kwargs = _json_kwargs(kwargs, name)
    model = timm.create_model(arch, pretrained=weights == "hub", **kwargs)
    if weights not in (None, "hub"):
        load_weights(model, weights)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    size = cfg.get("input_size")
    return model, SourceInfo(
        name,
        json_kwargs,
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        None if weights is None else imagenet_class_names(getattr(model, "num_classes", 0)),
        (size[1], size[2]) if size else None,
    )


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
    return model, SourceInfo(name, _json_kwargs(kwargs, name))


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
        _json_kwargs(kwargs, name),
        (0.0, 0.0, 0.0),  # the zoo's models take images in [0, 1], not normalised
        (1.0, 1.0, 1.0),
        _imagenet_classes() if classes == 1000 else None,
        (224, 224),
    )


def _imagenet_classes() -> list[str]:
    """The ImageNet class names in index order (shipped with torchvision, nothing downloads)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _open_clip(arch: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    from .clip import open_clip_source

    return open_clip_source(arch, weights, kwargs)


def _hf(path: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    from .clip import hf_source

    return hf_source(path, weights, kwargs)


_LIBRARIES: dict[str, Callable[[str, Any, dict[str, Any]], tuple[nn.Module, SourceInfo]]] = {
    "torchvision": _torchvision,
    "timm": _timm,
    "bcosify": _builtin,
    "bcos": _official,
    "open_clip": _open_clip,
    "hf": _hf,
}


def _json_kwargs(kwargs: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        json.dumps(kwargs)
    except TypeError as error:
        raise ModelSourceError(
            f"the arguments of {name} must be plain values (numbers, strings, lists) so that "
            f"the model can be saved and rebuilt: {error}"
        ) from None
    return dict(kwargs)


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


def load_state_dict_strictly(
    model: nn.Module, state: dict[str, torch.Tensor], what: str, error: type[Exception]
) -> None:
    """``model.load_state_dict(state)`` with an error that names every mismatched key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)} in the model"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"{what} do not fit the architecture {type(model).__name__}:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                )
                parts.append(f"{title}: {shown}")
        parts.append("Check that the weights were saved from the same architecture and options.")
        raise error("\n  ".join(parts))
    model.load_state_dict(state)
