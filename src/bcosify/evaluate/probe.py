"""Linear probes: how much a frozen model's features know, by a logistic regression on them.

The features are an image tower's embeddings (CLIP) or, for a classifier, the input of its last
linear layer or convolution (the classifier's), averaged over positions or tokens when it has
them. A multinomial logistic regression is fitted on the training features by full-batch
L-BFGS, its L2 penalty chosen on a held-out part of the training set, then refitted on all of
it and scored on the test features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import _evaluation

__all__ = ["LinearProbeResult", "linear_probe", "penultimate_features"]

DEFAULT_PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class LinearProbeResult:
    """Test accuracy of a linear probe, and what it was fitted with.

    Attributes:
        top1: accuracy on the test features.
        penalty: the L2 penalty chosen on the held-out part of the training set.
        features: the feature dimension.
        num_train, num_test: the numbers of examples.
    """

    top1: float
    penalty: float
    features: int
    num_train: int
    num_test: int

    def __str__(self) -> str:
        return (
            f"linear probe: top-1 {100 * self.top1:.1f}% on {self.num_test} test examples "
            f"({self.features} features, L2 penalty {self.penalty:g}, {self.num_train} training "
            "examples)"
        )


FeatureFunction = Callable[[Tensor], Tensor]


def penultimate_features(model: nn.Module) -> FeatureFunction:
    """The input of the last linear layer or convolution ``model`` calls, averaged over
    positions (``(N, C, H, W)``) or tokens (``(N, T, D)``): a classifier's features.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> penultimate_features(net)(torch.rand(5, 3, 8, 8)).shape
        torch.Size([5, 4])
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) or _bcos(m)]
    if not layers:
        raise EvaluationError(f"{type(model).__name__} has no linear layer or convolution")

    def features(images: Tensor) -> Tensor:
        seen: list[Tensor] = []
        handles = [
            layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            for layer in layers
        ]
        try:
            model(images)
        finally:
            for handle in handles:
                handle.remove()
        last = seen[-1]
        if last.ndim == 4:
            return last.mean((2, 3))
        return last.mean(1) if last.ndim == 3 else last

    return features


def _bcos(module: nn.Module) -> bool:
    from ..nn import BcosConv2d, BcosLinear

    return isinstance(module, (BcosConv2d, BcosLinear))


@torch.no_grad()
def _extract(features: FeatureFunction, model: nn.Module, data: Dataset, batch_size: int):
    device = device_of(model)
    xs, ys = [], []
    with _evaluation(model):
        for batch in DataLoader(data, batch_size=batch_size):
            images, labels = batch[0], batch[1]
            xs.append(features(images.to(device)).float().flatten(1).cpu())
            ys.append(torch.as_tensor(labels).long())
    if not xs:
        raise EvaluationError("the dataset is empty")
    return torch.cat(xs), torch.cat(ys)


def linear_probe(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    *,
    features: FeatureFunction | None = None,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    held_out: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> LinearProbeResult:
    """Fit a logistic regression on ``model``'s frozen features of ``train``; score ``test``.

    Args:
        model: a CLIP model (its image embeddings) or any classifier (see
            :func:`penultimate_features`), B-cos or not; it is not changed. It is given the
            images as they are: wrap an ordinary model that expects normalised images
            (``bcosify.train.Normalized``).
        train, test: datasets of ``(image in [0, 1], label, ...)``.
        features: images -> features ``(N, D)``; default: ``model.encode_image`` when the
            model has it (CLIP), else :func:`penultimate_features`.
        penalties: the L2 penalties tried on the held-out part.
        held_out: the fraction of ``train`` held out to choose the penalty.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
        >>> x = torch.randn(40, 3, 2, 2, generator=torch.Generator().manual_seed(0))
        >>> y = (x[:, 0, 0, 0] > 0).long()  # a linear function of the features: the inputs
        >>> data = torch.utils.data.TensorDataset(x, y)
        >>> linear_probe(net, data, data).top1 > 0.9
        True
    """
    if features is None:
        encode = getattr(model, "encode_image", None)
        features = encode if callable(encode) else penultimate_features(model)
    train_x, train_y = _extract(features, model, train, batch_size)
    test_x, test_y = _extract(features, model, test, batch_size)
    classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(len(order) * held_out))
    fit, check = order[cut:], order[:cut]
    if len(fit) == 0:
        raise EvaluationError("the training set is too small to hold a part out")
    scores = {
        p: _accuracy(_fit(train_x[fit], train_y[fit], classes, p), train_x[check], train_y[check])
        for p in penalties
    }
    best = max(scores, key=lambda p: (scores[p], p))  # ties: the stronger penalty
    weights = _fit(train_x, train_y, classes, best)
    return LinearProbeResult(
        _accuracy(weights, test_x, test_y), best, train_x.shape[1], len(train_x), len(test_x)
    )


def _fit(x: Tensor, y: Tensor, classes: int, penalty: float) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression with an L2 penalty on the weights, by L-BFGS."""
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    x64 = x.double()
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x64 @ weight + bias, y) + 0.5 * penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(weights: tuple[Tensor, Tensor], x: Tensor, y: Tensor) -> float:
    weight, bias = weights
    return float(((x.double() @ weight + bias).argmax(1) == y).double().mean())
