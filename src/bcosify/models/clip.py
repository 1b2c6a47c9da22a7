"""CLIP models from open_clip and Hugging Face transformers, seen through one interface.

A :class:`ClipModel` takes images in ``[0, 1]`` and returns image embeddings, and turns text
prompts into text embeddings: what zero-shot classification, distillation and text-prompted
explanations need, whatever library the model comes from. :func:`as_clip` wraps an open_clip
``CLIP`` or a transformers ``CLIPModel``; subclass :class:`ClipModel` for any other dual encoder.

The sources ``"open_clip:<arch>"`` and ``"hf:<folder>"`` of :func:`bcosify.models.create` build
these models from local files only; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import CheckpointError, ModelSourceError
from ..schema import (
    MAX_IMAGE_SIDE,
    AnyOf,
    Boolean,
    FieldError,
    Integer,
    ListOf,
    Nullable,
    Number,
    Record,
    Text,
    image_size,
)
from ..serialization import load_pretrained, read_json
from .sources import Source, SourceInfo, load_weights, register_source, source_info
from .text import load_tokenizer
from .transformers_config import TransformersConfig, build_model, read_folder_config

__all__ = [
    "CLIP_MODEL_TYPES",
    "ClipModel",
    "HFClipModel",
    "HFImageFeatures",
    "OpenClipModel",
    "as_clip",
    "hf_source",
    "open_clip_source",
    "transformers_source",
]

Tokenizer = Callable[[list[str]], Any]


class HFImageFeatures(nn.Module):
    """The image embedding of a transformers CLIP model, by the library's own code.

    ``get_image_features`` of a ``CLIPModel`` (the projected, layer-normed class token), for
    images normalised as the model expects.

    Example:
        >>> import torch
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...          "num_attention_heads": 2}
        >>> config = CLIPConfig(text_config=tower, projection_dim=8,
        ...                     vision_config={**tower, "image_size": 16, "patch_size": 8})
        >>> HFImageFeatures(CLIPModel(config).eval())(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 8])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        features = self.model.get_image_features(pixel_values=pixel_values)
        # transformers 5 returns an output object whose pooler_output is the projected embedding
        return getattr(features, "pooler_output", features)


class ClipModel(nn.Module):
    """A dual encoder: images in ``[0, 1]`` to image embeddings, prompts to text embeddings.

    Subclasses define :attr:`visual` (the image tower, on images normalised with
    ``input_mean``/``input_std``) and :meth:`encode_text`. This is the original model: the
    teacher of a distillation and the source of text embeddings (:meth:`freeze` stops its
    gradients).

    Attributes:
        input_mean, input_std: the normalisation of the image tower's input.
        logit_scale: the temperature CLIP multiplies cosine similarities by (1 if unknown).

    Example:
        >>> import torch
        >>> class Tiny(ClipModel):
        ...     def __init__(self):
        ...         super().__init__((0.5,) * 3, (0.5,) * 3)
        ...         self.tower = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
        ...     @property
        ...     def visual(self): return self.tower
        ...     def encode_text(self, prompts): return torch.ones(len(prompts), 4)
        >>> Tiny()(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        input_mean: Sequence[float],
        input_std: Sequence[float],
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.input_mean = tuple(float(m) for m in input_mean)
        self.input_std = tuple(float(s) for s in input_std)
        self.logit_scale = float(logit_scale)
        self.register_buffer("mean", torch.tensor(self.input_mean).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(self.input_std).view(1, -1, 1, 1), False)

    @property
    def visual(self) -> nn.Module:
        """The image tower: normalised images ``(N, 3, H, W)`` to embeddings ``(N, D)``."""
        raise NotImplementedError

    @property
    def feature_root(self) -> nn.Module:
        """The module in which the image tower's layers have the paths they have in the
        converted tower (for aligning features): the tower itself unless a subclass says."""
        return self.visual

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings ``(len(prompts), D)`` (not normalised)."""
        raise NotImplementedError

    def encode_image(self, images: Tensor) -> Tensor:
        """Image embeddings ``(N, D)`` of images in ``[0, 1]`` (not normalised)."""
        return self.visual((images - self.mean) / self.std)

    def forward(self, images: Tensor) -> Tensor:
        return self.encode_image(images)

    def freeze(self) -> ClipModel:
        """Stop gradients to every parameter; returns ``self``."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self


def _temperature(logit_scale: Tensor) -> float:
    """CLIP's temperature, ``exp(logit_scale)``; 1 on the ``meta`` device, where a model is
    built only for its shapes (a saved config being checked) and has no values."""
    if logit_scale.is_meta:
        return 1.0
    return float(logit_scale.detach().exp().flatten()[0])


def _normalisation(
    model: nn.Module, fallback: tuple[Sequence[float], Sequence[float]]
) -> tuple[Sequence[float], Sequence[float]]:
    """The normalisation the source recorded, else the library's preprocessing, else fallback."""
    info = source_info(model)
    if info is not None:
        return info.input_mean, info.input_std
    cfg = getattr(getattr(model, "visual", model), "preprocess_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return fallback


class OpenClipModel(ClipModel):
    """An open_clip ``CLIP`` (or ``CustomTextCLIP``) model with its tokenizer.

    The tokenizer defaults to open_clip's own BPE tokenizer (shipped with the package), which
    fits text towers with its vocabulary of 49408 tokens; pass ``tokenizer`` for others. The
    normalisation is the source's, else the model's ``preprocess_cfg``, else OpenAI's.

    Example:
        >>> import open_clip
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = OpenClipModel(open_clip.CLIP(8, vision, text))
        >>> clip.tokenize(["a dog"]).shape, clip(torch.rand(1, 3, 16, 16)).shape
        (torch.Size([1, 8]), torch.Size([1, 8]))
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer | None = None) -> None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = _normalisation(model, (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
        super().__init__(mean, std, _temperature(model.logit_scale))
        self.model = model
        self._tokenizer = tokenizer

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Token ids ``(N, context_length)`` for the text tower."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=self.model.context_length)
            if len(tokenizer.encoder) != self.model.vocab_size:
                raise ModelSourceError(
                    f"the text tower has a vocabulary of {self.model.vocab_size} tokens, "
                    f"open_clip's default tokenizer {len(tokenizer.encoder)}; pass the model's "
                    "tokenizer: as_clip(model, tokenizer=open_clip.get_tokenizer(arch))"
                )
            self._tokenizer = tokenizer
        return self._tokenizer(list(prompts))

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        return self.model.encode_text(self.tokenize(prompts).to(device_of(self.model)))


class HFClipModel(ClipModel):
    """A transformers ``CLIPModel`` or ``SiglipModel`` with its tokenizer (by default the one
    its ``"hf:<folder>"`` source read from the folder's ``tokenizer.json``).

    The normalisation is the source's (the folder's ``preprocessor_config.json``), else the
    model family's (OpenAI's for CLIP, 0.5 and 0.5 for SigLIP). SigLIP's text tower reads its
    last token, so its prompts are padded to the full length, as it was trained.

    Example:
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...          "num_attention_heads": 2}
        >>> config = CLIPConfig(text_config=tower, projection_dim=8,
        ...                     vision_config={**tower, "image_size": 16, "patch_size": 8})
        >>> HFClipModel(CLIPModel(config).eval())(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 8])
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer | None = None) -> None:
        from transformers.utils.constants import (
            IMAGENET_STANDARD_MEAN,
            IMAGENET_STANDARD_STD,
            OPENAI_CLIP_MEAN,
            OPENAI_CLIP_STD,
        )

        self._siglip = type(model).__name__.startswith("Siglip")
        family = (
            (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD)
            if self._siglip
            else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        )
        mean, std = _normalisation(model, family)
        super().__init__(mean, std, _temperature(model.logit_scale))
        self.model = model
        self.tokenizer = tokenizer or getattr(model, "bcosify_tokenizer", None)

    @functools.cached_property
    def visual(self) -> nn.Module:
        # built once, on first use, and not registered as a submodule: registering it would
        # store the tower's weights twice (it holds the model itself)
        return HFImageFeatures(self.model)

    @property
    def feature_root(self) -> nn.Module:
        # the converted tower keeps the model's paths (vision_model..., visual_projection)
        return self.model

    def tokenize(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` for the text tower, padded to the longest
        (SigLIP: to the text tower's length)."""
        if self.tokenizer is None:
            raise ModelSourceError(
                "this CLIP model has no tokenizer (its folder held no tokenizer.json): pass "
                "tokenizer= (as_clip(model, tokenizer=...), convert_clip(model, tokenizer=...))"
            )
        if self._siglip:
            length = self.model.config.text_config.max_position_embeddings
            return dict(
                self.tokenizer(
                    list(prompts),
                    padding="max_length",
                    max_length=length,
                    truncation=True,
                    return_tensors="pt",
                )
            )
        return dict(self.tokenizer(list(prompts), padding=True, return_tensors="pt"))

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        device = device_of(self.model)
        tokens = {k: v.to(device) for k, v in self.tokenize(prompts).items()}
        features = self.model.get_text_features(**tokens)
        # transformers 5 returns an output object whose pooler_output is the projected embedding
        return getattr(features, "pooler_output", features)


def _wrappers() -> dict[type, Callable[[nn.Module, Tokenizer | None], ClipModel]]:
    wrappers: dict[type, Callable[[nn.Module, Tokenizer | None], ClipModel]] = {}
    try:
        from open_clip.model import CLIP, CustomTextCLIP

        wrappers[CLIP] = OpenClipModel
        wrappers[CustomTextCLIP] = OpenClipModel
    except ImportError:
        pass
    try:
        from transformers import CLIPModel, SiglipModel

        wrappers[CLIPModel] = HFClipModel
        wrappers[SiglipModel] = HFClipModel
    except ImportError:
        pass
    return wrappers


def as_clip(model: nn.Module, tokenizer: Tokenizer | None = None) -> ClipModel:
    """``model`` as a :class:`ClipModel` (a ClipModel is returned as it is).

    The wrapper holds ``model`` itself, not a copy.

    Args:
        model: an open_clip ``CLIP``/``CustomTextCLIP``, a transformers ``CLIPModel`` or a
            :class:`ClipModel`.
        tokenizer: the text tokenizer, if not the model's default (see the wrappers).

    Example:
        >>> import open_clip
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> model = open_clip.CLIP(8, vision, text)
        >>> clip = as_clip(model)
        >>> clip.encode_text(["a photo of a dog"]).shape
        torch.Size([1, 8])
    """
    if isinstance(model, ClipModel):
        return model
    wrapper = _wrappers().get(type(model))
    if wrapper is None:
        raise ModelSourceError(
            f"{type(model).__name__} is not a CLIP model bcosify knows: pass an open_clip CLIP, "
            "a transformers CLIPModel, or subclass bcosify.models.ClipModel (an image tower "
            "and encode_text)"
        )
    return wrapper(model, tokenizer)


def open_clip_source(
    arch: str, weights: Any, kwargs: dict[str, Any]
) -> tuple[nn.Module, SourceInfo]:
    """``"open_clip:<arch>"``: open_clip's architecture, with weights from a local file only.

    ``weights`` (or ``pretrained``, open_clip's name for it) is a safetensors or state-dict file
    of the whole CLIP model; ``kwargs`` override the architecture's config (``embed_dim``,
    ``vision_cfg``, ``text_cfg``, ...). Nothing is downloaded.

    Example:
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> model, info = open_clip_source(
        ...     "ViT-B-32", None, {"embed_dim": 8, "vision_cfg": vision, "text_cfg": text})
        >>> info.name, info.input_size
        ('open_clip:ViT-B-32', (16, 16))
    """
    try:
        import open_clip
    except ImportError:
        raise ModelSourceError(
            "open_clip is not installed: pip install 'bcosify[open_clip]'"
        ) from None
    if weights is not None and not Path(str(weights)).is_file():
        raise ModelSourceError(
            f"open_clip weights must be a local file (safetensors or a state dict), got "
            f"{weights!r}; bcosify does not download pretrained tags"
        )
    if arch not in open_clip.list_models():
        raise ModelSourceError(f"open_clip has no model {arch!r}; see open_clip.list_models()")
    name = f"open_clip:{arch}"
    # no pretrained tag and no default tower weights: nothing may be downloaded; open_clip's
    # warning that the model is initialised randomly is wrong when a file is loaded next
    with _without_log_records("No pretrained weights loaded"):
        model = open_clip.create_model(
            arch,
            pretrained=None,
            pretrained_image=False,
            pretrained_text=False,
            # where tensors are made now: the meta device when a saved config is checked
            device=torch.get_default_device(),
            **kwargs,
        )
    if weights is not None:
        load_weights(model, weights)
    cfg = model.visual.preprocess_cfg
    size = getattr(model.visual, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size) if size else None
    info = SourceInfo(name, dict(kwargs), tuple(cfg["mean"]), tuple(cfg["std"]), None, size)
    model.visual.bcosify_source = info  # so that the tower converts on its own, too
    return model, info


@contextlib.contextmanager
def _without_log_records(prefix: str) -> Iterator[None]:
    """Drop the root logger's records whose message starts with ``prefix`` for the duration."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


CLIP_MODEL_TYPES = {"CLIPModel": "clip", "SiglipModel": "siglip"}
"""The transformers CLIP models bcosify builds: class name -> model type."""


def hf_source(path: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    """``"hf:<folder>"``: a transformers CLIP model saved in a local folder (safetensors only).

    The folder is what ``save_pretrained`` writes (``config.json`` and ``model.safetensors``).
    bcosify reads it as data: the config is checked field by field and the model built from it
    (:mod:`bcosify.models.transformers_config`), the weights loaded after their header was
    compared with the model built on the ``meta`` device, the normalisation and image size read
    from ``preprocessor_config.json`` when there is one, and the tokenizer from
    ``tokenizer.json`` (:func:`~bcosify.models.text.load_tokenizer`). The model records its
    source as ``"transformers:<Class>"`` with the checked config, so a converted model saves
    and rebuilds without naming the folder.

    Example:
        >>> import tempfile
        >>> from transformers import CLIPConfig, CLIPModel
        >>> tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...          "num_attention_heads": 2}
        >>> config = CLIPConfig(text_config=tower,
        ...                     vision_config={**tower, "image_size": 16, "patch_size": 8})
        >>> folder = tempfile.mkdtemp()
        >>> CLIPModel(config).save_pretrained(folder)
        >>> model, info = hf_source(folder, None, {})
        >>> type(model).__name__, info.name, info.input_size
        ('CLIPModel', 'transformers:CLIPModel', (16, 16))
    """
    _require_transformers()
    folder = Path(path)
    if weights is not None or kwargs:
        raise ModelSourceError(
            f"hf:{path} reads the weights and the architecture from the folder; pass neither "
            f"weights nor arguments (got weights={weights!r}, {sorted(kwargs)})"
        )
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"hf:{path}: {folder} is not a local model folder with a config.json (save one with "
            "model.save_pretrained(folder)); bcosify does not download models"
        )
    name, config = read_folder_config(folder, CLIP_MODEL_TYPES)
    arguments: dict[str, Any] = {"config": config, **_preprocessing(folder)}
    try:
        model = load_pretrained(folder, lambda: transformers_source(name, None, arguments)[0])
    except CheckpointError as error:
        raise ModelSourceError(str(error)) from None
    if (folder / "tokenizer.json").is_file():
        model.bcosify_tokenizer = load_tokenizer(folder)  # type: ignore[assignment]
    return model.eval(), model.bcosify_source


_PREPROCESSING = Record(
    {
        "image_mean": ListOf(Number(-100.0, 100.0), 3, 3),
        "image_std": ListOf(Number(0.0, 100.0, positive=True), 3, 3),
        "crop_size": AnyOf(
            Integer(1, MAX_IMAGE_SIDE), Record({"height": Integer(1, MAX_IMAGE_SIDE)})
        ),
    }
)


def _preprocessing(folder: Path) -> dict[str, Any]:
    """The normalisation and crop of ``preprocessor_config.json``, checked; its other fields
    describe resizing, which bcosify does itself, and are not read."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    data = read_json(path, "preprocessor config")
    if not isinstance(data, dict):
        raise ModelSourceError(f"{str(path)!r} holds no JSON object")
    read = {k: data[k] for k in ("image_mean", "image_std", "crop_size") if k in data}
    if isinstance(read.get("crop_size"), dict):
        read["crop_size"] = {"height": read["crop_size"].get("height")}
    try:
        checked = _PREPROCESSING.check(read, "preprocessor_config")
    except FieldError as error:
        raise ModelSourceError(f"{str(path)!r} is refused: {error}") from None
    crop = checked.pop("crop_size", None)
    if crop is not None:
        checked["image_size"] = crop if isinstance(crop, int) else crop["height"]
    return checked


def transformers_source(
    arch: str, weights: Any, kwargs: dict[str, Any]
) -> tuple[nn.Module, SourceInfo]:
    """``"transformers:<Class>"``: a transformers CLIP or SigLIP model built from a checked
    config (``kwargs["config"]``), with random weights or those of a local ``weights`` file;
    ``image_mean``, ``image_std`` and ``image_size`` override the family's preprocessing.

    This is how a converted transformers CLIP saves its source: as data, not as a folder.

    Example:
        >>> tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        ...          "num_attention_heads": 2}
        >>> config = {"model_type": "clip", "text_config": tower,
        ...           "vision_config": {**tower, "image_size": 16, "patch_size": 8}}
        >>> model, info = transformers_source("CLIPModel", None, {"config": config})
        >>> info.input_size
        (16, 16)
    """
    _require_transformers()
    from transformers.utils.constants import (
        IMAGENET_STANDARD_MEAN,
        IMAGENET_STANDARD_STD,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    )

    if arch not in CLIP_MODEL_TYPES:
        raise ModelSourceError(
            f"transformers:{arch} is not a CLIP model bcosify builds "
            f"({', '.join(CLIP_MODEL_TYPES)})"
        )
    config = kwargs["config"]
    if config.get("model_type") != CLIP_MODEL_TYPES[arch]:
        raise ModelSourceError(
            f"transformers:{arch} needs a {CLIP_MODEL_TYPES[arch]} config, got model_type "
            f"{config.get('model_type')!r}"
        )
    if weights is not None and not Path(str(weights)).is_file():
        raise ModelSourceError(f"transformers:{arch} takes a local weights file, got {weights!r}")
    model = build_model(arch, config)
    if weights is not None:
        load_weights(model, weights)
    family = (
        (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        if arch == "CLIPModel"
        else (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD)
    )
    mean = tuple(kwargs.get("image_mean", family[0]))
    std = tuple(kwargs.get("image_std", family[1]))
    side = kwargs.get("image_size", model.config.vision_config.image_size)
    info = SourceInfo(f"transformers:{arch}", dict(kwargs), mean, std, None, (side, side))
    model.bcosify_source = info  # type: ignore[assignment]
    return model.eval(), info


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelSourceError(
            "transformers is not installed: pip install 'bcosify[transformers]'"
        ) from None


# -- the CLIP sources of bcosify.models.create, with the arguments each accepts ---------------

_WIDTH = Integer(1, 2**16)
_COUNT = Integer(1, 256)
_RATE = Number(0.0, 1.0)
_RATIO = Number(0.0, 64.0, positive=True)

_OPEN_CLIP_VISION = Record(
    {
        "layers": AnyOf(_COUNT, ListOf(_COUNT, 4, 4)),
        "width": _WIDTH,
        "head_width": _WIDTH,
        "mlp_ratio": _RATIO,
        "patch_size": Integer(1, 256),
        "image_size": image_size(),
        "ls_init_value": Nullable(Number(0.0, 10.0)),
        "patch_dropout": _RATE,
        "attentional_pool": Boolean(),
        "attn_pooler_queries": _COUNT,
        "attn_pooler_heads": _COUNT,
        "no_ln_pre": Boolean(),
        "pos_embed_type": Text(choices=("learnable", "sin_cos_2d")),
        "final_ln_after_pool": Boolean(),
        "pool_type": Text(choices=("tok", "avg", "none")),
    }
)
_OPEN_CLIP_TEXT = Record(
    {
        "context_length": Integer(1, 4096),
        "vocab_size": Integer(1, 2**20),
        "width": _WIDTH,
        "heads": _COUNT,
        "layers": _COUNT,
        "mlp_ratio": _RATIO,
        "ls_init_value": Nullable(Number(0.0, 10.0)),
        "embed_cls": Boolean(),
        "pad_id": Integer(0, 2**20),
        "no_causal_mask": Boolean(),
        "final_ln_after_pool": Boolean(),
        "pool_type": Text(choices=("first", "last", "argmax", "none")),
        "proj_bias": Boolean(),
    }
)


register_source(
    "open_clip",
    Source(
        open_clip_source,
        Record(
            {
                "embed_dim": _WIDTH,
                "quick_gelu": Boolean(),
                "vision_cfg": _OPEN_CLIP_VISION,
                "text_cfg": _OPEN_CLIP_TEXT,
            }
        ),
        weights_alias="pretrained",
    ),
)
register_source("hf", Source(hf_source, Record({})))
register_source(
    "transformers",
    Source(
        transformers_source,
        Record(
            {
                "config": TransformersConfig(lambda: CLIP_MODEL_TYPES.values()),
                "image_mean": ListOf(Number(-100.0, 100.0), 3, 3),
                "image_std": ListOf(Number(0.0, 100.0, positive=True), 3, 3),
                "image_size": Integer(1, MAX_IMAGE_SIDE),
            },
            required=("config",),
        ),
    ),
)
