"""Metrics of models and of their explanations.

- :func:`accuracy`: top-1 / top-5 of a model on a dataset; :func:`correct`: which examples it
  gets right (for intervals and paired comparisons).
- :func:`grid_pointing_game`: localisation on grids of images of distinct classes (RECIPE 7): the
  share of the positive attribution for a cell's class that falls inside that cell.
- :func:`mask_localisation`: the share of positive attribution inside the object's mask.
- :func:`deletion_auc`: how fast the class probability falls when the most important pixels are
  removed first (lower is more faithful).

Attributions are summed over channels wherever a metric needs one value per pixel; explainers
that give one map per image spread it over the channels so that this sum is the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import _evaluation
from ..train.validation import validate
from ._common import (
    Probability,
    check_batch,
    check_positive,
    probabilities,
    resolve_probability,
)
from .explainers import Explainer
from .statistics import Interval, bootstrap_interval

__all__ = [
    "PointingGameResult",
    "accuracy",
    "correct",
    "deletion_auc",
    "deletion_curves",
    "grid_pointing_game",
    "make_grids",
    "mask_localisation",
    "pointing_game_scores",
]


def accuracy(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 64, progress: bool = False
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``model`` on ``dataset`` (items ``(image, label, ...)``);
    ``progress`` shows a bar of the batches.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.eye(3), torch.arange(3))
        >>> accuracy(torch.nn.Identity(), data)
        {'top1': 1.0, 'top5': 1.0}
    """
    scores = validate(model, dataset, batch_size=batch_size, progress=progress)
    return {"top1": scores["val_top1"], "top5": scores["val_top5"]}


@torch.no_grad()
def correct(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, k: int = 1) -> Tensor:
    """Whether each example's label is among ``model``'s ``k`` highest scores, ``(N,)`` bool.

    The mean is the top-k accuracy; per example, it gives the accuracy a bootstrap interval
    (:func:`bootstrap_interval`) and compares two models on the same examples.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.eye(3), torch.tensor([0, 2, 2]))
        >>> correct(torch.nn.Identity(), data).tolist()
        [True, False, True]
    """
    check_positive(batch_size=batch_size, k=k)
    device = device_of(model)
    hits = []
    with _evaluation(model):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            logits = model(batch[0].to(device)).float()
            best = logits.topk(min(k, logits.shape[1]), dim=1).indices.cpu()
            hits.append((best == torch.as_tensor(batch[1]).long()[:, None]).any(1))
    if not hits:
        raise EvaluationError("correct() needs a non-empty dataset")
    return torch.cat(hits)


@dataclass(frozen=True, eq=False)
class PointingGameResult:
    """The scores of a grid pointing game.

    Attributes:
        scores: ``(G, n * n)``, the score of grid ``g`` explained for the class of cell ``k``.
        mean: the mean score; 1 for a perfect explainer, ``1 / n**2`` for a uniform one.
        quartiles: the 25th, 50th and 75th percentiles of the scores.
        grid: ``n``, the grids are ``n x n``.
        cell_labels: ``(G, n * n)``, the class of every cell, in row-major cell order.
        examples: ``(G, n * n)``, the dataset index of every cell's image, when known.
    """

    scores: Tensor
    mean: float
    quartiles: tuple[float, float, float]
    grid: int
    cell_labels: Tensor | None = None
    examples: Tensor | None = None

    @classmethod
    def from_scores(
        cls,
        scores: Tensor,
        grid: int,
        *,
        cell_labels: Tensor | None = None,
        examples: Tensor | None = None,
    ) -> PointingGameResult:
        """Summarise per-cell scores: their mean and quartiles.

        Example:
            >>> result = PointingGameResult.from_scores(torch.tensor([[1.0, 0.5, 0.5, 0.0]]), 2)
            >>> result.mean, result.quartiles
            (0.5, (0.375, 0.5, 0.625))
        """
        flat = scores.detach().flatten().double().cpu()
        if flat.numel() == 0:
            raise EvaluationError("a pointing game result needs at least one score")
        q = torch.quantile(flat, torch.tensor([0.25, 0.5, 0.75], dtype=flat.dtype))
        return cls(
            scores=scores.detach().cpu(),
            mean=float(flat.mean()),
            quartiles=(float(q[0]), float(q[1]), float(q[2])),
            grid=grid,
            cell_labels=cell_labels,
            examples=examples,
        )

    @property
    def per_grid(self) -> Tensor:
        """``(G,)``: the mean score of each grid over its cells."""
        return self.scores.double().mean(1) if self.scores.ndim == 2 else self.scores.double()

    def interval(self, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
        """The mean with a bootstrap interval (:func:`bootstrap_interval`) over the grids.

        The grid is the unit that is resampled: the cells of a grid share its images, so their
        scores are not independent.

        Example:
            >>> scores = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
            >>> PointingGameResult.from_scores(scores, 2).interval().mean
            0.75
        """
        return bootstrap_interval(self.per_grid, level=level, resamples=resamples, seed=seed)

    def __str__(self) -> str:
        q1, median, q3 = self.quartiles
        interval = self.interval()
        return (
            f"{self.grid}x{self.grid} grid pointing game, {self.scores.shape[0]} grids: mean "
            f"{self.mean:.3f} (95% interval {interval.low:.3f} to {interval.high:.3f}), "
            f"quartiles {q1:.3f} / {median:.3f} / {q3:.3f} (uniform: {1 / self.grid**2:.3f})"
        )


def make_grids(
    images: Tensor,
    labels: Tensor,
    confidences: Tensor,
    n: int,
    num_grids: int,
    *,
    threshold: float = 0.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """``num_grids`` grids of ``n x n`` images of distinct classes, for the pointing game.

    Only images the model classified correctly with a confidence above ``threshold`` take part.
    For every grid, ``n * n`` distinct classes are drawn (seeded) and placed in the drawn order;
    each class contributes its most confident image not used yet (cycling when it runs out).

    Args:
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` true classes.
        confidences: either the class probabilities ``(N, num_classes)``, or ``(N,)`` the
            probability of the true class for correctly classified images and 0 (or anything
            not above ``threshold``) for misclassified ones.
        n: the grid side, at least 2.
        num_grids: how many grids.

    Returns:
        The grids ``(num_grids, C, n * H, n * W)`` and the class of every cell
        ``(num_grids, n * n)``; cell ``k`` is at row ``k // n``, column ``k % n``.

    Raises:
        EvaluationError: when fewer than ``n * n`` classes have a qualifying image.

    Example:
        >>> images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
        >>> grids, cell_labels = make_grids(images, torch.arange(4), torch.ones(4), 2, 1)
        >>> grids.shape, sorted(cell_labels[0].tolist())
        (torch.Size([1, 3, 4, 4]), [0, 1, 2, 3])
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise EvaluationError(
            f"make_grids: images must be a tensor (N, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    labels = torch.as_tensor(labels).cpu()
    examples, cell_labels = _select_cells(
        labels, _true_class_confidence(labels, confidences), n, num_grids, threshold, seed
    )
    return _assemble(images[examples.to(images.device)], n), cell_labels


def _true_class_confidence(labels: Tensor, confidences: Tensor) -> Tensor:
    """``(N,)``: the probability of the true class where the model is right, 0 where wrong."""
    confidences = torch.as_tensor(confidences).detach().float().cpu()
    count = labels.shape[0] if labels.ndim == 1 else -1
    if confidences.shape[0] != count or confidences.ndim not in (1, 2):
        raise EvaluationError(
            f"labels must be (N,) and confidences (N,) or (N, num_classes) for the same N; got "
            f"{tuple(labels.shape)} and {tuple(confidences.shape)}"
        )
    if confidences.ndim == 1:
        return confidences
    labels = labels.long()
    correct = confidences.argmax(1) == labels
    return torch.where(correct, confidences.gather(1, labels[:, None]).squeeze(1), 0.0)


def _select_cells(
    labels: Tensor, confidence: Tensor, n: int, num_grids: int, threshold: float, seed: int
) -> tuple[Tensor, Tensor]:
    """The example index and the class of every cell of every grid, both ``(G, n * n)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise EvaluationError(f"the grid side n must be an integer >= 2, got {n!r}")
    check_positive(num_grids=num_grids)
    if not 0.0 <= threshold < 1.0:
        raise EvaluationError(f"threshold is a probability in [0, 1), got {threshold}")
    by_class: dict[int, list[int]] = {}
    order = torch.argsort(confidence, descending=True, stable=True)
    for index in order[confidence[order] > threshold].tolist():
        by_class.setdefault(int(labels[index]), []).append(index)
    classes = sorted(by_class)
    need = n * n
    if len(classes) < need:
        kept = sum(len(v) for v in by_class.values())
        raise EvaluationError(
            f"a {n}x{n} grid needs {need} distinct classes with an image classified correctly "
            f"with confidence > {threshold}, but only {len(classes)} class(es) have one "
            f"({kept} of {len(labels)} images qualify). Use more images per class, a smaller "
            "n, a lower threshold, or a better trained model."
        )
    generator = torch.Generator().manual_seed(seed)
    used = dict.fromkeys(classes, 0)
    examples = torch.empty(num_grids, need, dtype=torch.long)
    cell_labels = torch.empty(num_grids, need, dtype=torch.long)
    for g in range(num_grids):
        picks = torch.randperm(len(classes), generator=generator)[:need].tolist()
        for k, pick in enumerate(picks):
            label = classes[pick]
            candidates = by_class[label]
            examples[g, k] = candidates[used[label] % len(candidates)]
            cell_labels[g, k] = label
            used[label] += 1
    return examples, cell_labels


def _assemble(cells: Tensor, n: int) -> Tensor:
    """``(G, n * n, C, H, W)`` cell images, row-major, to grids ``(G, C, n * H, n * W)``."""
    grids, _, channels, height, width = cells.shape
    rows = cells.reshape(grids, n, n, channels, height, width)
    return rows.permute(0, 3, 1, 4, 2, 5).reshape(grids, channels, n * height, n * width)


def pointing_game_scores(attributions: Tensor, n: int, *, smooth: int = 0, pool: int = 0) -> Tensor:
    """The pointing game score of every explained cell, ``(G, n * n)``.

    ``attributions[g, k]`` is the explanation of grid ``g`` for the class of its cell ``k``
    (row-major), either ``(C, n * H, n * W)`` or a map ``(n * H, n * W)``. It is summed over
    channels, summed over ``pool x pool`` squares that tile each cell (0 or 1: per pixel),
    smoothed with a ``smooth x smooth`` average pool (stride 1, same size; 0 or 1: no
    smoothing), and clamped at 0; the score is the positive mass inside cell ``k`` divided by
    the total positive mass, or 0 when there is none.

    ``pool`` compares explanations at one resolution: a perturbation method that moves
    ``pool``-pixel windows by their width (occlusion) sums the evidence inside each window, so
    positive and negative evidence there cancel before the clamp; a per-pixel map summed over
    the same squares is the same explanation at that resolution.

    Example:
        >>> maps = torch.zeros(1, 4, 4, 4)
        >>> maps[0, 1, 0, 3] = 1.0  # the explanation for cell 1 (top right) points there
        >>> pointing_game_scores(maps, 2).tolist()
        [[0.0, 1.0, 0.0, 0.0]]
        >>> maps[0, 1, 1, 3] = -2.0  # negative evidence beside it: it wins per pixel only
        >>> pointing_game_scores(maps, 2, pool=2).tolist()
        [[0.0, 0.0, 0.0, 0.0]]
    """
    maps = _channel_sum(attributions, 4, "pointing_game_scores")
    grids, cells, height, width = maps.shape
    if cells != n * n or height % n or width % n:
        raise EvaluationError(
            f"pointing_game_scores: a {n}x{n} grid needs attributions (G, {n * n}, [C,] H, W) "
            f"with H and W divisible by {n}; got {tuple(attributions.shape)}"
        )
    flat = _pooled(maps.flatten(0, 1), pool, (height // n, width // n))
    positive = _positive_part(flat, smooth).view(grids, cells, height, width)
    rows = torch.arange(height, device=maps.device) // (height // n)
    columns = torch.arange(width, device=maps.device) // (width // n)
    cell_of_pixel = rows[:, None] * n + columns[None, :]
    inside = cell_of_pixel == torch.arange(cells, device=maps.device)[:, None, None]
    return _share_inside(positive, inside)


def mask_localisation(attributions: Tensor, masks: Tensor, *, smooth: int = 0) -> Tensor:
    """The share of positive attribution inside the object mask, per example ``(N,)``.

    Attributions ``(N, C, H, W)`` or maps ``(N, H, W)`` are summed over channels, optionally
    smoothed (as in :func:`pointing_game_scores`) and clamped at 0; masks are ``(N, H, W)`` or
    ``(N, 1, H, W)``, true on the object. An example without positive attribution scores 0.

    Example:
        >>> maps = torch.tensor([[[1.0, 3.0], [-5.0, 0.0]]])
        >>> mask_localisation(maps, torch.tensor([[[True, False], [True, True]]])).tolist()
        [0.25]
    """
    maps = _channel_sum(attributions, 3, "mask_localisation")
    masks = torch.as_tensor(masks, device=maps.device)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != maps.shape:
        raise EvaluationError(
            f"mask_localisation: masks must be (N, H, W) or (N, 1, H, W) matching the "
            f"attributions {tuple(attributions.shape)}; got {tuple(masks.shape)}"
        )
    return _share_inside(_positive_part(maps, smooth), masks.bool())


def _channel_sum(attributions: Tensor, map_ndim: int, what: str) -> Tensor:
    if not isinstance(attributions, Tensor) or attributions.ndim not in (map_ndim, map_ndim + 1):
        shape = (
            tuple(attributions.shape)
            if isinstance(attributions, Tensor)
            else type(attributions).__name__
        )
        raise EvaluationError(
            f"{what}: expected attributions with {map_ndim + 1} dimensions (channels third "
            f"from last) or maps with {map_ndim}; got {shape}"
        )
    maps = attributions.detach().double()
    return maps.sum(-3) if attributions.ndim == map_ndim + 1 else maps


def _pooled(maps: Tensor, pool: int, cell: tuple[int, int]) -> Tensor:
    """Maps ``(B, H, W)`` with every pixel replaced by the mean of its ``pool x pool`` square
    (the squares tile the ``cell``-sized cells; a mean, as the scores are shares of mass)."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise EvaluationError(f"pool is a square's side in pixels >= 0, got {pool!r}")
    if pool <= 1:
        return maps
    if cell[0] % pool or cell[1] % pool:
        raise EvaluationError(
            f"pool={pool} squares must tile each cell of {cell[0]} x {cell[1]} pixels, so that "
            f"no square straddles two cells; pass a divisor of both"
        )
    means = F.avg_pool2d(maps[:, None], pool)
    return means.repeat_interleave(pool, -2).repeat_interleave(pool, -1)[:, 0]


def _positive_part(maps: Tensor, smooth: int) -> Tensor:
    """Maps ``(B, H, W)`` averaged over ``smooth x smooth`` windows, then clamped at 0."""
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
        raise EvaluationError(f"smooth is an average-pool size >= 0, got {smooth!r}")
    if smooth > 1:
        # asymmetric padding keeps the size for even windows too; windows that reach over the
        # border average the pixels they cover only
        pad = ((smooth - 1) // 2, smooth // 2) * 2
        total = F.avg_pool2d(F.pad(maps[:, None], pad), smooth, stride=1, divisor_override=1)
        count = F.avg_pool2d(
            F.pad(torch.ones_like(maps[:1, None]), pad), smooth, stride=1, divisor_override=1
        )
        maps = (total / count)[:, 0]
    return maps.clamp_min(0)


def _share_inside(positive: Tensor, inside: Tensor) -> Tensor:
    """Positive mass inside the region over all positive mass (0 without any), float32."""
    total = positive.sum((-2, -1))
    within = (positive * inside).sum((-2, -1))
    share = torch.where(total > 0, within / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return share.float()


def grid_pointing_game(
    model: nn.Module,
    explainer: Explainer,
    dataset: Dataset,
    *,
    n: int = 2,
    num_grids: int = 100,
    threshold: float = 0.5,
    smooth: int = 0,
    pool: int = 0,
    seed: int = 0,
    batch_size: int = 32,
    confidence: Probability = "auto",
) -> PointingGameResult:
    """The grid pointing game of ``explainer`` (RECIPE 7).

    ``model`` classifies every example of ``dataset`` (items ``(image, label, ...)``, images in
    ``[0, 1]``); :func:`make_grids`' selection builds ``num_grids`` grids of ``n x n`` distinct
    classes; each grid is explained for each of its cells' classes, and
    :func:`pointing_game_scores` scores the explanations.

    Args:
        model: the classifier, taking images in ``[0, 1]`` (the one the explainer explains).
        explainer: from :func:`build_explainer`.
        smooth, pool: how the maps are smoothed, or summed over squares, before they are
            scored (:func:`pointing_game_scores`).
        confidence: how logits become the confidence compared with ``threshold``: ``"auto"`` is
            sigmoid for B-cos models (trained with binary cross-entropy), softmax otherwise.
        batch_size: images per forward pass when classifying, and images per call of the
            explainer (``batch_size // n**2`` grids, each repeated for its ``n**2`` cells).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from bcosify.evaluate import build_explainer
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten())
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(4, 3)[:, :, None, None] * 10)
        ...     _ = model[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 2.0]))
        >>> colours = torch.cat([torch.eye(3), torch.zeros(1, 3)])  # red, green, blue, black
        >>> data = TensorDataset(colours[:, :, None, None].expand(4, 3, 4, 4), torch.arange(4))
        >>> result = grid_pointing_game(model, build_explainer("input_x_gradient", model), data,
        ...                             num_grids=3)
        >>> result.scores.shape, result.grid
        (torch.Size([3, 4]), 2)
    """
    check_positive(batch_size=batch_size)
    kind = resolve_probability(model, confidence)
    labels, confidences = _classify(model, dataset, batch_size, kind)
    examples, cell_labels = _select_cells(labels, confidences, n, num_grids, threshold, seed)
    cells = n * n
    grids_per_call = max(1, batch_size // cells)
    scores = []
    for start in range(0, num_grids, grids_per_call):
        chunk = examples[start : start + grids_per_call]
        images = torch.stack([dataset[int(i)][0] for i in chunk.flatten()])
        grids = _assemble(images.view(*chunk.shape, *images.shape[1:]), n)
        attributions = explainer.attribute(
            grids.repeat_interleave(cells, dim=0),
            cell_labels[start : start + grids_per_call].flatten(),
        )
        per_cell = attributions.view(len(chunk), cells, *attributions.shape[1:])
        scores.append(pointing_game_scores(per_cell, n, smooth=smooth, pool=pool).cpu())
    return PointingGameResult.from_scores(
        torch.cat(scores), n, cell_labels=cell_labels, examples=examples
    )


def _classify(
    model: nn.Module, dataset: Dataset, batch_size: int, kind: Literal["softmax", "sigmoid"]
) -> tuple[Tensor, Tensor]:
    """Every example's label and the confidence in it where the model is right (0 where wrong)."""
    device = device_of(model)
    labels, confidences = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with _evaluation(model), torch.no_grad():
        for batch in loader:
            images, batch_labels = batch[0].to(device), torch.as_tensor(batch[1]).long()
            probs = probabilities(model(images), kind).cpu()
            labels.append(batch_labels)
            confidences.append(_true_class_confidence(batch_labels, probs))
    if not labels:
        raise EvaluationError("the grid pointing game needs a non-empty dataset")
    return torch.cat(labels), torch.cat(confidences)


def deletion_curves(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attributions: Tensor,
    *,
    steps: int = 20,
    baseline: float | Tensor = 0.0,
    probability: Probability = "auto",
    batch_size: int = 64,
) -> Tensor:
    """The target probability as the most important pixels are removed, ``(N, steps + 1)``.

    Pixels are ranked by the channel-summed attribution (ties: raster order); point ``i`` sets
    the top ``round(i / steps * H * W)`` pixels, all channels, to ``baseline`` (a number, or a
    tensor broadcastable to ``inputs``, e.g. blurred images). See :func:`deletion_auc`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> curves = deletion_curves(model, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]),
        ...                          torch.rand(3, 1, 2, 2), steps=4)
        >>> curves.shape
        torch.Size([3, 5])
    """
    x, targets = check_batch(inputs, targets, "deletion")
    count, _, height, width = x.shape
    maps = _channel_sum(attributions, 3, "deletion")
    if maps.shape != (count, height, width):
        raise EvaluationError(
            f"deletion: attributions must be shaped like the inputs {tuple(inputs.shape)} (or "
            f"maps {(count, height, width)}); got {tuple(attributions.shape)}"
        )
    check_positive(steps=steps, batch_size=batch_size)
    kind = resolve_probability(model, probability)
    device = device_of(model)
    x, maps, targets = x.to(device), maps.to(device), targets.to(device)
    try:
        base = torch.as_tensor(baseline, dtype=x.dtype, device=device).expand_as(x)
    except RuntimeError:
        raise EvaluationError(
            f"deletion: baseline must be a number or broadcastable to the inputs "
            f"{tuple(inputs.shape)}; got shape {tuple(torch.as_tensor(baseline).shape)}"
        ) from None
    pixels = height * width
    order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.arange(pixels, device=device).expand(count, -1)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    removed = torch.round(torch.linspace(0, 1, steps + 1, dtype=torch.float64) * pixels)
    removed = removed.long().to(device)
    example = torch.arange(count, device=device).repeat_interleave(steps + 1)
    step = torch.arange(steps + 1, device=device).repeat(count)
    curves = torch.empty(count * (steps + 1), device=device)
    with _evaluation(model), torch.no_grad():
        for start in range(0, len(example), batch_size):
            e, s = example[start : start + batch_size], step[start : start + batch_size]
            drop = (rank[e] < removed[s][:, None]).view(-1, 1, height, width)
            probs = probabilities(model(torch.where(drop, base[e], x[e])), kind)
            curves[start : start + len(e)] = probs.gather(1, targets[e, None])[:, 0]
    return curves.view(count, steps + 1).to(inputs.device)


def deletion_auc(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    attributions: Tensor,
    *,
    steps: int = 20,
    baseline: float | Tensor = 0.0,
    probability: Probability = "auto",
    batch_size: int = 64,
) -> Tensor:
    """The area under the deletion curve per example, ``(N,)``: lower is more faithful.

    The most important pixels (by channel-summed attribution) are set to ``baseline`` first,
    in ``steps`` equal fractions from 0 to 100% (:func:`deletion_curves`), and the target
    probability (``"auto"``: sigmoid for B-cos models, softmax otherwise) is integrated over the
    removed fraction in ``[0, 1]`` by the trapezoid rule.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = model[1].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 50.0]]))
        ...     _ = model[1].bias.fill_(-25.0)
        >>> right, wrong = torch.tensor([0.0, 0, 0, 1]), torch.tensor([1.0, 0, 0, 0])
        >>> aucs = deletion_auc(model, torch.ones(2, 1, 2, 2), torch.zeros(2, dtype=torch.long),
        ...                     torch.stack([right, wrong]).view(2, 1, 2, 2),
        ...                     steps=4, probability="sigmoid")
        >>> [round(a, 3) for a in aucs.tolist()]
        [0.125, 0.875]
    """
    curves = deletion_curves(
        model,
        inputs,
        targets,
        attributions,
        steps=steps,
        baseline=baseline,
        probability=probability,
        batch_size=batch_size,
    )
    return torch.trapezoid(curves, dx=1.0 / steps, dim=1)
