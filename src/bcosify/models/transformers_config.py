"""transformers configs read as checked data: every field typed and bounded, nothing passed on.

A transformers ``config.json`` (a model folder's own, or the copy a converted text classifier or
CLIP model saves) decides what bcosify builds, so it is checked before transformers sees it:

- ``model_type`` must be one that the caller builds (``bert``, ``clip``, ...), and the class to
  build comes from a list of the caller's, never from the file;
- every other field must be a field of that config class (its defaults name them), with the
  type of its default (a number where the default is a number, and so on); whole numbers are
  bounded, texts are short names (no paths, URLs or hub ids: no ``/`` or ``:``), and nested
  sub-configs (CLIP's ``text_config``) are checked the same way;
- fields that only describe where a file came from (``_name_or_path``,
  ``transformers_version``, ``architectures``) are dropped; anything else, ``auto_map``,
  ``trust_remote_code`` and ``quantization_config`` among them, is refused by name.

The model is then built from the config object by its class (no ``from_pretrained``), and its
weights loaded by :func:`bcosify.serialization.load_pretrained`, which compares them with the
model built on the ``meta`` device first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..schema import (
    MAX_CLASSES,
    AnyOf,
    Boolean,
    Field,
    FieldError,
    Integer,
    ListOf,
    MapOf,
    Nullable,
    Number,
    Text,
)

__all__ = [
    "DROPPED_FIELDS",
    "TransformersConfig",
    "build_config",
    "build_model",
    "check_config",
    "read_folder_config",
    "sequence_classifiers",
]

DROPPED_FIELDS = frozenset({"_name_or_path", "transformers_version", "architectures"})
"""Fields that say where a config came from; read by nobody, so dropped rather than refused."""

_NAME = Text(pattern=r"[A-Za-z0-9_.\- ]*", max_length=100)  # no '/', ':' or '\\': no paths
_COUNT = Integer(0, 1024)  # layers, heads, experts: each builds modules in a Python loop
_SIZE = Integer(-1, 2**20)  # sizes, ids (-1 is "none" in some configs)
_FLOAT = Number(-1e9, 1e9)
_SCALAR = AnyOf(Boolean(), _SIZE, _FLOAT, _NAME)
_SMALL_LIST = ListOf(Nullable(_SCALAR), 0, 64)
# a field whose default is None: a scalar, or a small object or list of scalars (rope
# settings), or an object of such objects (rope settings per layer type: OLMo 3, Gemma 3)
_FLAT = Nullable(AnyOf(_SCALAR, _SMALL_LIST))
_OPEN = Nullable(
    AnyOf(_SCALAR, _SMALL_LIST, MapOf(_NAME, AnyOf(_FLAT, MapOf(_NAME, _FLAT, 64)), 64))
)
_LABEL_INDEX = AnyOf(Integer(0, MAX_CLASSES), Text(pattern=r"[0-9]{1,6}"))
_SPECIAL = {
    "id2label": Nullable(MapOf(_LABEL_INDEX, Text(), MAX_CLASSES)),
    "label2id": Nullable(MapOf(Text(), Integer(0, MAX_CLASSES), MAX_CLASSES)),
    "dtype": Nullable(Text(choices=("float32", "float16", "bfloat16"))),
    "torch_dtype": Nullable(Text(choices=("float32", "float16", "bfloat16"))),
    "_attn_implementation": Nullable(Text(choices=("eager", "sdpa"))),
}


def _counted(name: str) -> bool:
    return any(part in name for part in ("layers", "heads", "experts", "n_layer", "n_head"))


@functools.cache
def _defaults(model_type: str) -> dict[str, Any]:
    from transformers import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]().to_dict()


@functools.cache
def _sub_configs(model_type: str) -> dict[str, str]:
    """The nested configs of a model type: field name -> their model type."""
    from transformers import CONFIG_MAPPING

    subs = getattr(CONFIG_MAPPING[model_type], "sub_configs", None) or {}
    return {name: cls.model_type for name, cls in subs.items() if getattr(cls, "model_type", "")}


def _field_for(name: str, default: Any) -> Field:
    if name in _SPECIAL:
        return _SPECIAL[name]
    if isinstance(default, bool):
        return Boolean()
    if isinstance(default, int):
        return _COUNT if _counted(name) else _SIZE
    if isinstance(default, float):
        return _FLOAT
    if isinstance(default, str):
        return _NAME
    if isinstance(default, (list, tuple)):
        return ListOf(Nullable(_SCALAR), 0, 1024)
    return _OPEN


def check_config(data: Any, model_types: Collection[str], where: str = "") -> dict[str, Any]:
    """``data`` (a transformers config as JSON) checked against its config class, without the
    fields in :data:`DROPPED_FIELDS`; raises :class:`~bcosify.schema.FieldError`.

    Example:
        >>> check_config({"model_type": "bert", "hidden_size": 16}, ["bert"])
        {'model_type': 'bert', 'hidden_size': 16}
        >>> check_config({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}}, ["bert"])
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: unknown field 'auto_map' of a bert config
    """
    if not isinstance(data, Mapping):
        raise FieldError(f"{where}: expected a transformers config (an object)")
    model_type = data.get("model_type")
    if model_type not in model_types:
        raise FieldError(
            f"{where + ': ' if where else ''}model_type {model_type!r} is not one bcosify builds "
            f"here ({', '.join(sorted(model_types))})"
        )
    checked = _check(data, model_type, where)
    try:  # the config class's own checks (strict types, sizes that must divide)
        build_config(checked)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FieldError(
            f"{where + ': ' if where else ''}transformers refuses it: {message}"
        ) from None
    return checked


def _check(data: Mapping[str, Any], model_type: str, where: str) -> dict[str, Any]:
    defaults = _defaults(model_type)
    subs = _sub_configs(model_type)
    checked: dict[str, Any] = {}
    prefix = f"{where}." if where else ""
    for name, value in data.items():
        if name in DROPPED_FIELDS:
            continue
        if name == "model_type":
            if value != model_type:
                raise FieldError(f"{prefix}model_type: {value!r}, expected {model_type!r}")
            checked[name] = value
        elif name in subs:
            if not isinstance(value, Mapping):
                raise FieldError(f"{prefix}{name}: expected an object")
            checked[name] = _check(value, subs[name], f"{prefix}{name}")
        elif name in defaults or name in _SPECIAL:
            checked[name] = _field_for(name, defaults.get(name)).check(value, f"{prefix}{name}")
        else:
            raise FieldError(f"unknown field {name!r} of a {model_type} config")
    return checked


class TransformersConfig(Field):
    """A schema field holding a transformers config of one of ``model_types`` (a callable
    returning them, so that transformers is imported only when a config is checked).

    Example:
        >>> TransformersConfig(lambda: ["bert"]).check({"model_type": "gpt2"})
        Traceback (most recent call last):
        ...
        bcosify.schema.FieldError: model_type 'gpt2' is not one bcosify builds here (bert)
    """

    def __init__(self, model_types: Callable[[], Collection[str]]) -> None:
        self.model_types = model_types

    def check(self, value: Any, where: str = "") -> dict[str, Any]:
        return check_config(value, self.model_types(), where)

    def describe(self) -> str:
        return f"a transformers config of a {' or '.join(sorted(self.model_types()))} model"


def build_config(checked: dict[str, Any]) -> Any:
    """The transformers config object of a checked config (:func:`check_config`).

    Example:
        >>> build_config({"model_type": "bert", "hidden_size": 16}).hidden_size
        16
    """
    from transformers import CONFIG_MAPPING

    fields = dict(checked)
    return CONFIG_MAPPING[fields.pop("model_type")](**fields)


def build_model(class_name: str, checked: dict[str, Any]) -> nn.Module:
    """A transformers model of the class ``class_name`` (one the caller chose from its own
    list) with random weights, from a checked config.

    Example:
        >>> build_model("BertModel", {"model_type": "bert", "hidden_size": 8,
        ...     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
        ...     "vocab_size": 10}).config.hidden_size
        8
    """
    import transformers

    return getattr(transformers, class_name)(build_config(checked))


@functools.cache
def sequence_classifiers() -> dict[str, str]:
    """transformers' own sequence classifiers: class name -> model type.

    Example:
        >>> sequence_classifiers()["BertForSequenceClassification"]
        'bert'
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    classes: dict[str, str] = {}
    for model_type, names in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.items():
        for name in (names,) if isinstance(names, str) else names:
            classes[name] = model_type
    return classes


def read_folder_config(
    folder: str | Path, classes: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    """The class to build and the checked config of a transformers model folder (what
    ``save_pretrained`` writes): its ``config.json`` must name, in ``architectures``, one of
    ``classes`` (class name -> model type), and be of that model type.

    Raises:
        ModelSourceError: naming what the folder's config holds that is refused.
    """
    from ..errors import CheckpointError, ModelSourceError
    from ..serialization import read_json

    path = Path(folder) / "config.json"
    try:
        data = read_json(path, "transformers config")
    except CheckpointError as error:
        raise ModelSourceError(str(error)) from None
    names = data.get("architectures") if isinstance(data, dict) else None
    known = (
        [n for n in names if isinstance(n, str) and n in classes] if isinstance(names, list) else []
    )
    if not known:
        raise ModelSourceError(
            f"{str(path)!r} names the architectures {names!r}; bcosify builds "
            f"{', '.join(sorted(classes)[:8])}{', ...' if len(classes) > 8 else ''} here"
        )
    try:
        return known[0], check_config(data, [classes[known[0]]])
    except FieldError as error:
        raise ModelSourceError(f"{str(path)!r} is refused: {error}") from None
