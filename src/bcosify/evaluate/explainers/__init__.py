"""Attribution methods behind one registry: the B-cos model's own explanation and post-hoc
baselines, for images and for texts.

Each method is one module that registers its image and text classes
(:func:`~bcosify.evaluate.explainers.registry.register`); :func:`build_explainer` builds one by
name with its options checked. Image explainers' ``attribute(inputs, target)`` return
attributions shaped like the images; text explainers' ``attribute(input_ids, attention_mask,
target)`` one value per token (see :mod:`~bcosify.evaluate.explainers.base`).

Image methods and their options (defaults in brackets):

- ``"bcos"``: the model's own explanation, contributions ``x * W(x)`` folded to RGB; B-cos
  models only. No options.
- ``"saliency"``: the input gradient; ``absolute`` [True] takes its absolute value.
- ``"input_x_gradient"``: input times gradient. No options.
- ``"integrated_gradients"``: ``n_steps`` [50], ``internal_batch_size`` [64] (inputs per
  forward pass), ``baseline`` [0.0].
- ``"gradcam"``: GradCAM on ``layer`` [the deepest feature map at least ``min_resolution`` [7]
  pixels a side, see :func:`gradcam_layer`] (a module or its dotted name), ``relu`` [True];
  upsampled bilinearly to the input size.
- ``"deeplift"``: ``baseline`` [0.0]. Needs every ReLU/pooling non-linearity to be its own
  module called once per forward pass, and refuses models where one is reused.
- ``"occlusion"``: ``window`` [1/8 of the image side], ``stride`` [half the window],
  ``baseline`` [0.0], ``perturbations_per_eval`` [16]; the change of the target logit.
- ``"lime"``: ``patches x patches`` squares [8], ``n_samples`` [1000], ``kernel_width``
  [0.25], ridge ``alpha`` [1.0], ``baseline`` [0.0], ``seed`` [0], ``batch_size`` [256]
  (perturbed images per forward pass); the LIME package's defaults.
- ``"rise"``: ``n_masks`` [2000], ``cells`` [7], ``keep`` [0.5], ``seed`` [0], ``batch_size``
  [256] (masked images per forward pass), ``probability`` ["auto": sigmoid for B-cos models,
  softmax otherwise], ``centred`` [False: as published; True subtracts the mean probability].

GradCAM, LIME and RISE give one map per image; it is returned divided by the number of channels
on every channel, so the channel sum is the map.

Text methods: ``"bcos"``, ``"saliency"`` (``absolute`` [True]), ``"input_x_gradient"``,
``"integrated_gradients"`` (``n_steps`` [50], ``internal_batch_size`` [64]), ``"deeplift"``,
``"occlusion"`` (``perturbations_per_eval`` [8]) and ``"lime"`` (``n_samples`` [200],
``kernel_width`` [0.25], ``alpha`` [1.0], ``seed`` [0], ``batch_size`` [64]): the same options
under the same names, on the embedded tokens (baselines are zero embeddings).
"""

from __future__ import annotations

from typing import Any

from torch import nn

# one module per method: importing them registers them, in the order the names are listed
# (``"bcos"`` first, then the post-hoc methods as reports show them)
# isort: off
from . import bcos, saliency, input_x_gradient, integrated_gradients  # noqa: F401
from . import gradcam, deeplift, occlusion, lime, rise  # noqa: F401

# isort: on
from .base import Explainer, TextExplainer, distinct_images, posthoc, token_embedding
from .gradcam import gradcam_layer
from .registry import build_explainer, names, options_of, register

__all__ = [
    "EXPLAINER_NAMES",
    "TEXT_EXPLAINER_NAMES",
    "Explainer",
    "TextExplainer",
    "build_explainer",
    "build_text_explainer",
    "distinct_images",
    "gradcam_layer",
    "options_of",
    "posthoc",
    "register",
    "token_embedding",
]

EXPLAINER_NAMES: tuple[str, ...] = names("image")
"""The image explainers, ``"bcos"`` first, then the post-hoc methods."""
TEXT_EXPLAINER_NAMES: tuple[str, ...] = names("text")
"""The text explainers, ``"bcos"`` first, then the post-hoc methods."""


def build_text_explainer(name: str, model: nn.Module, **options: Any) -> TextExplainer:
    """The text explainer ``name`` for ``model`` (a converted
    :class:`~bcosify.convert.BcosTextModel`, a :class:`~bcosify.models.text.TextClassifier` or a
    transformers sequence classifier): ``build_explainer(name, model, "text", **options)``.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> explainer = build_text_explainer("occlusion", BertForSequenceClassification(config))
        >>> ids, mask = torch.tensor([[2, 5, 6, 3]]), torch.ones(1, 4, dtype=torch.long)
        >>> explainer.attribute(ids, mask, torch.tensor([1])).shape
        torch.Size([1, 4])
    """
    return build_explainer(name, model, "text", **options)
