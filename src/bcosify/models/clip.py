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
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import ModelSourceError
from .sources import SourceInfo, load_weights, source_info

__all__ = [
    "ClipModel",
    "HFClipModel",
    "HFImageFeatures",
    "OpenClipModel",
    "as_clip",
    "hf_source",
    "open_clip_source",
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
        super().__init__(mean, std, float(model.logit_scale.detach().exp().flatten()[0]))
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
    """A transformers ``CLIPModel`` or ``SiglipModel`` with its tokenizer (from the model's
    folder by default).

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

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer | None = None, folder: str | None = None
    ) -> None:
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
        super().__init__(mean, std, float(model.logit_scale.detach().exp()))
        self.model = model
        info = source_info(model)
        self._folder = folder or (info.name.partition(":")[2] if info else None)
        self._tokenizer = tokenizer

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
        if self._tokenizer is None:
            self._tokenizer = _hf_tokenizer(self._folder)
        if self._siglip:
            length = self.model.config.text_config.max_position_embeddings
            return dict(
                self._tokenizer(
                    list(prompts),
                    padding="max_length",
                    max_length=length,
                    truncation=True,
                    return_tensors="pt",
                )
            )
        return dict(self._tokenizer(list(prompts), padding=True, return_tensors="pt"))

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        device = device_of(self.model)
        tokens = {k: v.to(device) for k, v in self.tokenize(prompts).items()}
        features = self.model.get_text_features(**tokens)
        # transformers 5 returns an output object whose pooler_output is the projected embedding
        return getattr(features, "pooler_output", features)


def _hf_tokenizer(folder: str | None) -> Tokenizer:
    if folder is None:
        raise ModelSourceError(
            "the CLIP model has no known folder to read its tokenizer from; pass tokenizer="
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelSourceError(
            f"could not read a tokenizer from {folder!r} ({error}); save it there with "
            "tokenizer.save_pretrained(folder), or pass tokenizer="
        ) from None


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
    kwargs = dict(kwargs)
    pretrained = kwargs.pop("pretrained", None)
    if weights is not None and pretrained is not None:
        raise ModelSourceError("pass the weights file as weights= or as pretrained=, not both")
    weights = weights if weights is not None else pretrained
    if weights is not None and not Path(str(weights)).is_file():
        raise ModelSourceError(
            f"open_clip weights must be a local file (safetensors or a state dict), got "
            f"{weights!r}; bcosify does not download pretrained tags"
        )
    if arch not in open_clip.list_models():
        raise ModelSourceError(f"open_clip has no model {arch!r}; see open_clip.list_models()")
    name = f"open_clip:{arch}"
    from .sources import _json_kwargs

    json_kwargs = _json_kwargs(kwargs, name)
    # no pretrained tag and no default tower weights: nothing may be downloaded; open_clip's
    # warning that the model is initialised randomly is wrong when a file is loaded next
    with _without_log_records("No pretrained weights loaded"):
        model = open_clip.create_model(
            arch, pretrained=None, pretrained_image=False, pretrained_text=False, **kwargs
        )
    if weights is not None:
        load_weights(model, weights)
    cfg = model.visual.preprocess_cfg
    size = getattr(model.visual, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size) if size else None
    info = SourceInfo(name, json_kwargs, tuple(cfg["mean"]), tuple(cfg["std"]), None, size)
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


def hf_source(path: str, weights: Any, kwargs: dict[str, Any]) -> tuple[nn.Module, SourceInfo]:
    """``"hf:<folder>"``: a transformers CLIP model saved in a local folder (safetensors only).

    The folder is what ``save_pretrained`` writes (``config.json`` and ``model.safetensors``);
    the normalisation is read from its ``preprocessor_config.json`` when there is one.

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
        >>> type(model).__name__, info.input_size
        ('CLIPModel', (16, 16))
    """
    try:
        import transformers
    except ImportError:
        raise ModelSourceError(
            "transformers is not installed: pip install 'bcosify[transformers]'"
        ) from None
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
    try:
        model = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as error:
        raise ModelSourceError(
            f"could not load hf:{path} from safetensors weights: {error}"
        ) from None
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    mean, std, size = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, None
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        cfg = json.loads(processor.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        crop = cfg.get("crop_size")
        side = crop.get("height") if isinstance(crop, dict) else crop
        size = (int(side), int(side)) if side else None
    vision = getattr(model.config, "vision_config", model.config)
    size = size or (vision.image_size, vision.image_size)
    # an absolute path, so that a model saved from this source loads from any directory
    name = f"hf:{folder.resolve()}"
    return model.eval(), SourceInfo(name, {}, tuple(mean), tuple(std), None, size)
