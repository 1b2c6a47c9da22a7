"""Colour fidelity: whether a B-cos explanation shows the evidence in the input's own colours.

A B-cos model whose dynamic weights ``W(x)`` align with its encoded input ``[x, 1 - x]`` colours
each pixel of its explanation (:func:`bcosify.explain.explanation_colours`) with the pixel's own
colour. :func:`colour_fidelity` measures how far it is from that, where it matters: on the
pixels that carry the strongest positive evidence (inside the object masks when given).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..device import device_of
from ..errors import EvaluationError
from ..explain import Explanation, explain, explanation_colours

__all__ = ["ColourFidelity", "colour_fidelity", "colour_fidelity_of_model"]


@dataclass(frozen=True)
class ColourFidelity:
    """Colour error per image, with two references on the same pixels: colours shuffled
    between images, and the pixels' own colours rounded to 0 or 1 per channel.

    Attributes:
        error: per image, the mean absolute difference (over the three channels and the
            selected pixels) between the explanation's colour and the pixel's; 0 is perfect
            alignment, ``(N,)``.
        shuffled: the control: the same pixels' explanation colours against the colours of
            pixels selected at random from the whole batch's selected pixels (a seeded
            permutation), ``(N,)``. An explanation no better than its control shows colours
            unrelated to its image.
        pixels: how many pixels each image's error is over, ``(N,)``.
        rounded: the reference of the pixels' own colours rounded to 0 or 1 per channel,
            ``(N,)``: what an explanation scores whose weights lie on the pixel's side of every
            channel but have no input-independent part (``W_k + W_{k+3} = 0``, as in a
            converted first layer's ``[d, -d]``), each channel then reading as 0 or 1. An error
            near it has the colours' sides right and their shades missing.
    """

    error: Tensor
    shuffled: Tensor
    pixels: Tensor
    rounded: Tensor

    @property
    def mean(self) -> float:
        """The mean error over the images."""
        return float(self.error.mean())


def colour_fidelity(
    explanation: Explanation,
    images: Tensor,
    masks: Tensor | None = None,
    *,
    fraction: float = 0.2,
    seed: int = 0,
) -> ColourFidelity:
    """How far the explanation's colours are from the pixels' own, on the strongest evidence.

    Per image, the pixels with positive contribution (inside the mask when ``masks`` is given)
    are ranked by contribution and the top ``fraction`` of them (at least one) are kept; on those
    the error is the mean of ``|colour - pixel|`` over the three channels.

    Args:
        explanation: of a model that encodes its input as ``[x, 1 - x]`` (``inputs`` and
            ``weights`` with six channels), from :func:`bcosify.explain`.
        images: the explained images, ``(N, 3, H, W)`` in ``[0, 1]``.
        masks: optional object masks, ``(N, H, W)`` (or ``(N, 1, H, W)``), true on the object.
        fraction: the share of the positive-evidence pixels kept, in ``(0, 1]``.
        seed: of the control's permutation.

    Raises:
        EvaluationError: the explanation has no six-channel weights, the shapes disagree, or
            an image has no positive evidence (inside its mask).

    Example:
        >>> import torch
        >>> from bcosify.explain import Explanation
        >>> x = torch.rand(4, 3, 8, 8)
        >>> encoded = torch.cat([x, 1 - x], 1)
        >>> z = torch.zeros(4)
        >>> aligned = Explanation(z, None, z, encoded, 2 * encoded, 2 * encoded * encoded,
        ...     (2 * encoded * encoded).sum(1), x, {}, z)
        >>> fidelity = colour_fidelity(aligned, x)
        >>> round(fidelity.mean, 6), bool(fidelity.shuffled.mean() > 0.1)
        (0.0, True)
        >>> # uniform colours rounded to 0 or 1 are 1/4 off on average
        >>> 0.2 < float(colour_fidelity(aligned, x, fraction=1.0).rounded.mean()) < 0.3
        True
    """
    weights, contribution_map = explanation.weights, explanation.contribution_map
    if weights.ndim != 4 or weights.shape[1] != 6:
        raise EvaluationError(
            "colour fidelity needs the weights of a model that encodes its input as [x, 1 - x] "
            f"(N, 6, H, W); got weights of shape {tuple(weights.shape)}"
        )
    n, _, height, width = weights.shape
    if images.shape != (n, 3, height, width):
        raise EvaluationError(
            f"images must be the explained images, ({n}, 3, {height}, {width}); got "
            f"{tuple(images.shape)}"
        )
    if not 0 < fraction <= 1:
        raise EvaluationError(f"fraction must be in (0, 1], got {fraction}")
    allowed = contribution_map > 0
    if masks is not None:
        masks = masks.reshape(n, height, width) if masks.numel() == n * height * width else masks
        if masks.shape != (n, height, width):
            raise EvaluationError(
                f"masks must be ({n}, {height}, {width}), one per image; got {tuple(masks.shape)}"
            )
        allowed = allowed & masks.bool().to(allowed.device)
    counts = allowed.flatten(1).sum(1)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero().flatten().tolist()
        raise EvaluationError(
            f"images {empty} have no pixel with positive contribution"
            + (" inside their masks" if masks is not None else "")
            + ": their explanations show no evidence to compare colours on"
        )
    keep = (counts.float() * fraction).ceil().long().clamp_min(1)
    scores = torch.where(allowed, contribution_map, torch.full_like(contribution_map, -torch.inf))
    order = scores.flatten(1).argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(height * width).expand(n, -1).contiguous())
    selected = ranks < keep[:, None]  # (N, H*W)
    shown = explanation_colours(weights).flatten(2).transpose(1, 2)  # (N, H*W, 3)
    truth = images.detach().float().to(shown.device).flatten(2).transpose(1, 2)
    owner = selected.nonzero()[:, 0]
    shown, truth = shown[selected], truth[selected]
    generator = torch.Generator().manual_seed(seed)
    others = truth[torch.randperm(len(truth), generator=generator).to(truth.device)]
    pixels = keep.float().cpu()

    def per_image(errors: Tensor) -> Tensor:
        return torch.zeros(n).index_add_(0, owner.cpu(), errors.mean(1).cpu()) / pixels

    return ColourFidelity(
        error=per_image((shown - truth).abs()),
        shuffled=per_image((shown - others).abs()),
        pixels=keep.cpu(),
        rounded=per_image((truth.round() - truth).abs()),
    )


def colour_fidelity_of_model(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    masks: Tensor | None = None,
    *,
    batch_size: int = 64,
    fraction: float = 0.2,
    seed: int = 0,
) -> ColourFidelity:
    """:func:`colour_fidelity` of a B-cos model's own explanations, on the images it classifies
    correctly (each explained for its label), a batch at a time on the model's device; the
    control shuffles colours within each batch.

    Raises:
        EvaluationError: no image is classified correctly, or as :func:`colour_fidelity`.

    Example:
        >>> import torch
        >>> from bcosify.nn import BcosConv2d, InputEncoding
        >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 3, padding=1),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> images = torch.rand(8, 3, 8, 8)
        >>> with torch.no_grad():
        ...     labels = model(images).argmax(1)
        >>> len(colour_fidelity_of_model(model, images, labels).error)
        8
    """
    device = device_of(model)
    parts: list[ColourFidelity] = []
    for start in range(0, len(images), batch_size):
        batch = slice(start, start + batch_size)
        x, y = images[batch].to(device), labels[batch].to(device)
        with torch.no_grad():
            right = model(x).argmax(1) == y
        if not bool(right.any()):
            continue
        chosen = masks[batch][right.cpu()] if masks is not None else None
        explanation = explain(model, x[right], y[right])
        parts.append(
            colour_fidelity(
                explanation, x[right].cpu(), chosen, fraction=fraction, seed=seed + start
            )
        )
    if not parts:
        raise EvaluationError(
            f"none of the {len(images)} images is classified correctly: colour fidelity is "
            "measured on the explanations of correct predictions"
        )
    return ColourFidelity(
        error=torch.cat([part.error for part in parts]),
        shuffled=torch.cat([part.shuffled for part in parts]),
        pixels=torch.cat([part.pixels for part in parts]),
        rounded=torch.cat([part.rounded for part in parts]),
    )
