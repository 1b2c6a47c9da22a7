"""What every explainer shares: the interfaces, the base classes that check a batch and leave
the model as found, and the helpers of the image and text methods.

Image explainers take images ``(N, 3, H, W)`` in ``[0, 1]`` and one class per image, and return
float32 attributions shaped like the images, detached. Text explainers take ``input_ids`` and an
``attention_mask`` ``(N, L)`` and return one value per token ``(N, L)``. Post-hoc methods run in
evaluation mode with explanation mode off (:func:`posthoc`); afterwards every module's train/eval
flag and explanation mode are what they were, and no gradient or hook is left behind. Post-hoc
text methods explain the model as a function of its token embedding's output
(:class:`Embedded`), so every method perturbs or differentiates the same input.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ...device import device_of
from ...errors import EvaluationError
from ...explain.core import _evaluation
from ...models.text import text_logits
from ...nn import BcosTokenEmbedding, explanation_mode
from .._common import check_batch, check_positive

__all__ = [
    "Embedded",
    "Explainer",
    "ImageExplainer",
    "TextExplainer",
    "TextExplainerBase",
    "captum",
    "distinct_images",
    "pair",
    "posthoc",
    "token_embedding",
]

# Captum announces what it does on every call (hooks set, gradients required); the explainer
# undoes all of it, so the messages are noise in an evaluation loop.
_CAPTUM_NOTICES = (
    r"\s*Setting forward, backward hooks and attributes on non-linear",
    r"Input Tensor \d+ did not already require gradients",
    r"Internal batch size cannot be less than the number of input examples",
    r"Attempting to construct interpretable model with > 10000 features",
)


@runtime_checkable
class Explainer(Protocol):
    """An attribution method for one image model.

    ``attribute(inputs, target)`` takes images ``(N, 3, H, W)`` in ``[0, 1]`` and one class
    index per image ``(N,)``, and returns attributions shaped like ``inputs``: detached,
    float32, with no gradient, hook or mode flag left behind on the model.
    """

    name: str

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor: ...


@runtime_checkable
class TextExplainer(Protocol):
    """An attribution method for one text classifier: ``attribute(input_ids, attention_mask,
    target)`` gives one value per token ``(N, L)``, detached float32, leaving no gradient,
    hook or mode flag behind."""

    name: str

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor: ...


class _Base:
    """The name, the options and how an explainer prints."""

    name = ""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self.model = model
        self.options: dict[str, Any] = dict(options)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name!r}{', ' if options else ''}{options})"


class ImageExplainer(_Base):
    """Checks the batch, runs :meth:`_attribute` as a post-hoc method sees the model, and
    returns float32 attributions shaped like the images (one map per image, ``(N, 1, H, W)``,
    goes to every channel)."""

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        x, targets = check_batch(inputs, target, self.name)
        device = device_of(self.model)
        with posthoc(self.model):
            result = self._attribute(x.to(device), targets.to(device))
        result = result.detach().to(device=inputs.device, dtype=torch.float32)
        return result.expand_as(inputs).contiguous()

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


class TextExplainerBase(_Base):
    """Checks the batch of token ids, runs :meth:`_attribute` as a post-hoc method sees the
    model, and returns float32 values per token."""

    def attribute(self, input_ids: Tensor, attention_mask: Tensor, target: Tensor) -> Tensor:
        ids, mask, targets = check_tokens(input_ids, attention_mask, target, self.name)
        device = device_of(self.model)
        with posthoc(self.model):
            result = self._attribute(ids.to(device), mask.to(device), targets.to(device))
        return result.detach().to(device=input_ids.device, dtype=torch.float32)

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


@contextlib.contextmanager
def posthoc(model: nn.Module) -> Iterator[None]:
    """The model as a post-hoc method sees it: in evaluation mode, explanation mode off, and
    Captum's notices about it silenced; put back as found afterwards.

    Example:
        >>> model = torch.nn.Linear(2, 2).train()
        >>> with posthoc(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    with _evaluation(model), explanation_mode(model, enabled=False), warnings.catch_warnings():
        for notice in _CAPTUM_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        yield


def captum() -> Any:
    """``captum.attr``, or an :class:`~bcosify.errors.EvaluationError` saying how to install it."""
    try:
        import captum.attr
    except ImportError:
        raise EvaluationError(
            "the post-hoc explainers need Captum: pip install 'bcosify[captum]'"
        ) from None
    return captum.attr


def token_embedding(model: nn.Module) -> nn.Module:
    """The module whose output is a text model's embedded tokens: a converted model's
    :class:`~bcosify.nn.BcosTokenEmbedding`, else ``get_input_embeddings()`` of the transformers
    model inside.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=32, vocab_size=30)
        >>> token_embedding(BertForSequenceClassification(config))
        Embedding(30, 16, padding_idx=0)
    """
    for module in model.modules():
        if isinstance(module, BcosTokenEmbedding):
            return module
        get = getattr(module, "get_input_embeddings", None)
        if callable(get):
            return get()
    raise EvaluationError(
        f"{type(model).__name__} has no token embedding (a transformers model's "
        "get_input_embeddings()); text explainers need one"
    )


class Embedded(nn.Module):
    """A text model as a function of its token embedding's output, which Captum perturbs or
    differentiates: a forward hook replaces the embedding's output by the given tensor, so the
    position and type embeddings are added by the model as usual."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._embedding = [token_embedding(model)]  # a list: not a second submodule path

    def forward(self, embeddings: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            return embeddings

        handle = self._embedding[0].register_forward_hook(replace)
        try:
            return text_logits(self.model, input_ids, attention_mask)
        finally:
            handle.remove()

    def embed(self, input_ids: Tensor) -> Tensor:
        """The embedded tokens ``(N, L, D)``, detached."""
        with torch.no_grad():
            return self._embedding[0](input_ids).detach()


def check_tokens(
    input_ids: Tensor, attention_mask: Tensor, target: Tensor | Sequence[int], what: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Integer token ids ``(N, L)``, a mask of their shape and one class per text, checked.

    Example:
        >>> ids, mask, target = check_tokens(torch.ones(2, 3, dtype=torch.long),
        ...                                  torch.ones(2, 3), [0, 1], "lime")
        >>> target.dtype
        torch.int64
    """
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        raise EvaluationError(f"{what}: input_ids must be an integer tensor (N, L)")
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        raise EvaluationError(f"{what}: attention_mask must have the shape of input_ids")
    targets = torch.as_tensor(target, device=input_ids.device)
    if targets.shape != (len(input_ids),) or targets.is_floating_point():
        raise EvaluationError(
            f"{what}: target must hold one class index per text, shape ({len(input_ids)},); got "
            f"{tuple(targets.shape)}"
        )
    return input_ids, attention_mask, targets.long()


def distinct_images(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct images of a batch and, for every image, the index of its distinct copy.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> unique, row = distinct_images(x[[1, 0, 1]])
        >>> len(unique), bool(torch.equal(unique[row], x[[1, 0, 1]]))
        (2, True)
    """
    unique, row = torch.unique(inputs.flatten(1), dim=0, return_inverse=True)
    return unique.view(-1, *inputs.shape[1:]), row


def pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """An int or ``(height, width)`` as a pair of positive ints.

    Example:
        >>> pair("window", 3)
        (3, 3)
    """
    result = (value, value) if isinstance(value, int) else tuple(value)
    if len(result) != 2:
        raise EvaluationError(f"{name} must be an int or (height, width), got {value!r}")
    check_positive(**{f"{name} height": result[0], f"{name} width": result[1]})
    return result  # type: ignore[return-value]
