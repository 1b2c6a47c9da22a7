"""Turning what the user hands in into the module a recipe trains."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..convert import BcosModel, BcosTextModel, convert
from ..convert.text import is_text_classifier
from ..errors import BcosifyError
from ..models.sources import IMAGENET_MEAN, IMAGENET_STD, source_info
from ..models.text import TextClassifier
from .recipes import Recipe

__all__ = ["Normalized", "prepare_model", "trained_network"]


class Normalized(nn.Module):
    """An ordinary model with its input normalisation in front: it takes images in ``[0, 1]``.

    Example:
        >>> net = Normalized(torch.nn.Identity(), (0.5,), (0.5,))
        >>> net(torch.ones(1, 1, 1, 1)).item()
        1.0
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a model's input is normalised with: its source's, else ImageNet's."""
    info = source_info(model)
    return (info.input_mean, info.input_std) if info else (IMAGENET_MEAN, IMAGENET_STD)


def prepare_model(model: nn.Module, recipe: Recipe) -> nn.Module:
    """The module to train: the model itself, its B-cos conversion, or a fresh B-cos model.

    The input normalisation is the model's source's (:func:`bcosify.models.create` records it),
    or ImageNet's for a model of unknown origin, both to train an ordinary model and to fold
    into the first layer of a B-cosified one.

    - ``recipe.model == "original"``: an ordinary model, trained on normalised images.
    - ``"bcosify"``: converted with :func:`bcosify.convert` at ``recipe.b`` with
      ``recipe.activations``, ``recipe.keep_bias`` and ``recipe.maxpool`` (a model that is a
      :class:`BcosModel` already is trained as it is).
    - ``"bcos-scratch"``: converted, then every layer re-initialised.

    A transformers sequence classifier (or a :class:`~bcosify.models.text.TextClassifier`)
    takes token ids, not images: it is trained as a :class:`TextClassifier` (``"original"``)
    or converted to a :class:`~bcosify.convert.BcosTextModel`.

    Example:
        >>> from bcosify.models import create
        >>> from bcosify.train import get_recipe
        >>> type(prepare_model(create("torchvision:resnet18"), get_recipe("bcosify-cnn"))).__name__
        'BcosModel'
    """
    text = model.model if isinstance(model, TextClassifier) else model
    if recipe.model == "original":
        if isinstance(model, (BcosModel, BcosTextModel)):
            raise BcosifyError(
                f"recipe {recipe.name!r} trains an ordinary model, but this one is a B-cos model; "
                "use a B-cos recipe (bcosify-cnn, bcosify-vit, bcosify-lm) to fine-tune it"
            )
        if is_text_classifier(text):
            return TextClassifier(text)
        return Normalized(model, *input_normalization(model))
    if isinstance(model, (BcosModel, BcosTextModel)):
        converted = model
    elif is_text_classifier(text):
        converted = convert(
            text, b=recipe.b, activations=recipe.activations, keep_bias=recipe.keep_bias
        ).model
    else:
        mean, std = input_normalization(model)
        converted = convert(
            model,
            input_mean=mean,
            input_std=std,
            b=recipe.b,
            activations=recipe.activations,
            keep_bias=recipe.keep_bias,
            maxpool=recipe.maxpool,
        ).model
    if recipe.model == "bcos-scratch":
        for module in converted.modules():
            if module is not converted and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return converted


def trained_network(prepared: nn.Module) -> nn.Module:
    """The model to save: the B-cos model, or the ordinary model without its normalisation."""
    return prepared.model if isinstance(prepared, Normalized) else prepared
