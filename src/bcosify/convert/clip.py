"""The B-cos CLIP model: the converted image tower with the original model, frozen.

:func:`convert_clip` converts the image tower of a CLIP model (through :func:`bcosify.convert`
and the CLIP glue of the families in :mod:`bcosify.convert.families`) and pairs it with the
original model: its text tower, frozen and untouched, gives the text embeddings, and its image
tower is the teacher of a distillation (:mod:`bcosify.train.distill`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import CheckpointError
from ..models.clip import ClipModel, HFClipModel, Tokenizer, as_clip
from ..models.sources import SOURCE_FIELDS, check_source_fields, create, source_info
from ..models.text import load_tokenizer, save_tokenizer
from ..schema import MAX_IMAGE_SIDE, Field, Integer, ListOf, Nullable
from ..serialization import (
    load_pretrained,
    read_checked_config,
    read_config_json,
    write_pretrained,
)
from .converter import ConversionReport, convert
from .hub import HubMixin, register_loader
from .model import BcosModel
from .options import OPTION_FIELDS, ConversionOptions

__all__ = ["BcosCLIP", "ClipConversion", "convert_clip", "load_clip"]

_FORMAT = "bcosify-clip/1"


class BcosCLIP(HubMixin, nn.Module):
    """A B-cosified CLIP: the B-cos image tower and the original model, frozen.

    ``model(images)`` (images in ``[0, 1]``) returns the B-cos image embeddings, so that
    ``bcosify.explain(model, images, target=text_embedding)`` explains the cosine similarity of
    each image with a text. ``encode_text`` uses the original text tower; ``original`` is the
    whole original model (its image tower is the teacher for distillation).

    ``save_pretrained`` / ``bcosify.load_clip`` keep it on disk, ``from_pretrained`` /
    ``push_to_hub`` on the Hugging Face Hub (:mod:`bcosify.convert.hub`).

    Attributes:
        visual: the converted image tower (a :class:`~bcosify.convert.BcosModel`).
        original: the original model as a :class:`~bcosify.models.ClipModel`, frozen.

    Example:
        >>> import bcosify, open_clip, torch
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = open_clip.CLIP(8, vision, text)
        >>> model, report = convert_clip(clip)
        >>> text = model.encode_text(["a photo of a dog"])
        >>> e = bcosify.explain(model, torch.rand(2, 3, 16, 16), target=text[0])
        >>> bool(e.residual.abs().max() < 1e-4)
        True
    """

    def __init__(self, visual: BcosModel, original: ClipModel, source: dict[str, Any]) -> None:
        super().__init__()
        self.visual = visual
        self.original = original.freeze()
        self.source = source

    def forward(self, images: Tensor) -> Tensor:
        return self.visual(images)

    def encode_image(self, images: Tensor) -> Tensor:
        """B-cos image embeddings ``(N, D)`` of images in ``[0, 1]`` (not normalised)."""
        return self.visual(images)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings ``(N, D)`` from the original text tower (not normalised)."""
        return self.original.encode_text(prompts)

    @property
    def options(self) -> ConversionOptions:
        return self.visual.config.options

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (both towers) and ``config.json``, and the tokenizer of
        a transformers model (``tokenizer.json``, see
        :func:`~bcosify.models.text.save_tokenizer`); returns the folder.

        Example:
            >>> import open_clip, tempfile
            >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8,
            ...           "image_size": 16}
            >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
            >>> clip = open_clip.CLIP(8, vision, text)
            >>> model, _ = convert_clip(clip)
            >>> sorted(p.name for p in model.save_pretrained(tempfile.mkdtemp()).iterdir())
            ['config.json', 'model.safetensors']
        """
        config = {
            "format": _FORMAT,
            "bcosify_version": __version__,
            **self.source,
            "options": self.options.to_dict(),
        }
        tokenizer = getattr(self.original, "tokenizer", None)
        if isinstance(self.original, HFClipModel) and tokenizer is not None:
            save_tokenizer(tokenizer, directory)
        return write_pretrained(directory, self, config)

    _pipeline_tag = "zero-shot-image-classification"

    def _card_facts(self) -> dict[str, Any]:
        source = self.source.get("source") or "a user-built CLIP model"
        facts = self.visual._card_facts()
        facts["title"] = f"B-cos CLIP {source}"
        facts["details"]["source model"] = f"`{source}`: the B-cos image tower, with the "
        facts["details"]["source model"] += "original text tower frozen beside it"
        facts["details"].pop("classes")
        facts["explain"] = [
            'text = model.encode_text(["a photo of a dog"])',
            "e = bcosify.explain(model, images, target=text[0])   # the cosine similarity",
        ]
        return facts


class ClipConversion(NamedTuple):
    """The result of :func:`convert_clip`: unpack it as ``model, report = convert_clip(...)``."""

    model: BcosCLIP
    report: ConversionReport


def convert_clip(
    model: nn.Module, *, tokenizer: Tokenizer | None = None, **options: Any
) -> ClipConversion:
    """Convert the image tower of a CLIP model; keep the text tower frozen and untouched.

    The converted tower starts from the pretrained weights (as :func:`bcosify.convert` does)
    and takes images in ``[0, 1]``; the model's normalisation is folded into its first layer.
    The original is not modified: the result holds a frozen copy of it.

    Args:
        model: an open_clip ``CLIP``, a transformers ``CLIPModel`` or a
            :class:`~bcosify.models.ClipModel`.
        tokenizer: the text tokenizer, if not the model's default.
        **options: options of :func:`bcosify.convert` (``b``, ``keep_bias``, ``encoding``,
            ...); ``logit_bias`` defaults to None (a tower outputs embeddings).

    Example:
        >>> import open_clip, torch
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = open_clip.CLIP(8, vision, text)
        >>> same, _ = convert_clip(clip.eval(), b=1.0, keep_bias=True)
        >>> x = torch.rand(2, 3, 16, 16)
        >>> bool(torch.allclose(same(x), same.original.encode_image(x), atol=1e-5))
        True
    """
    info = source_info(model)
    original = as_clip(copy.deepcopy(model), tokenizer).eval()
    options.setdefault("logit_bias", None)
    options.setdefault("input_mean", original.input_mean)
    options.setdefault("input_std", original.input_std)
    visual, report = convert(original.visual, **options)
    report.model = type(model).__name__
    report.notes.append(
        "the text tower is the original's, frozen and untouched; model.original holds the "
        "original image tower too (the teacher for distillation)"
    )
    source = {
        "source": info.name if info else None,
        "source_kwargs": dict(info.kwargs) if info else {},
        "input_size": list(info.input_size) if info and info.input_size else None,
    }
    return ClipConversion(BcosCLIP(visual, original, source).eval(), report)


_CONFIG_FIELDS: dict[str, Field] = {
    **SOURCE_FIELDS,
    "input_size": Nullable(ListOf(Integer(1, MAX_IMAGE_SIDE), 2, 2)),
    "options": OPTION_FIELDS,
}


def load_clip(directory: str | Path, model: nn.Module | None = None) -> BcosCLIP:
    """Load a :class:`BcosCLIP` saved with :meth:`BcosCLIP.save_pretrained` (no pickles, every
    field of the config checked).

    The original is rebuilt from the saved source (``"open_clip:<arch>"``, or
    ``"transformers:<Class>"`` with its checked transformers config) and converted with the
    saved options, then every weight is loaded strictly; a saved ``tokenizer.json`` is read
    as data (:func:`~bcosify.models.text.load_tokenizer`). A model without a source (a
    :class:`~bcosify.models.ClipModel` of your own) needs ``model``, an instance of its
    architecture.

    Example:
        >>> import tempfile, torch, bcosify
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> clip = bcosify.models.create(
        ...     "open_clip:ViT-B-32", embed_dim=8, vision_cfg=vision, text_cfg=text)
        >>> model, _ = convert_clip(clip)
        >>> loaded = load_clip(model.save_pretrained(tempfile.mkdtemp()))
        >>> x = torch.rand(1, 3, 16, 16)
        >>> torch.equal(loaded(x), model(x))
        True
    """
    format = read_config_json(directory).get("format")
    if format != _FORMAT:
        raise CheckpointError(
            f"{str(directory)!r} is not a saved B-cos CLIP (format {format!r}); a B-cos image "
            "model loads with bcosify.load"
        )
    config = read_checked_config(
        directory, _FORMAT, _CONFIG_FIELDS, ("options",), rule=check_source_fields
    )
    source = config.get("source")
    if model is None and source is None:
        raise CheckpointError(
            f"{str(directory)!r} holds a B-cos CLIP made from a model without a source; "
            "pass its architecture: load_clip(directory, model=MyClipModel())"
        )
    tokenizer = None
    if (Path(directory) / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(directory)

    def build() -> BcosCLIP:
        original = model if model is not None else create(source, **config["source_kwargs"])
        return convert_clip(original, tokenizer=tokenizer, **config["options"]).model

    return load_pretrained(directory, build, config, precheck=model is None).eval()


register_loader(_FORMAT, load_clip)
