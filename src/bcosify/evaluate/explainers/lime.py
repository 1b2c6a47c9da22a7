"""LIME (Ribeiro et al., 2016) with Captum's ``LimeBase``, as the original LIME package does it,
for images (squares of the image) and texts (tokens).

Each of ``n_samples`` perturbed inputs keeps every feature with probability 1/2 and replaces the
others (with ``baseline`` pixels, or zero embeddings); the samples are weighted by an
exponential kernel of the cosine distance of their on/off vector to the all-on one (width
``kernel_width``), and a weighted ridge regression (``alpha``, with an intercept) of the
target's score on the on/off vectors gives one coefficient per feature. These are the LIME
package's choices (ridge with alpha 1, kernel width 0.25); Captum's own default, a Lasso from
scikit-learn, is not a dependency of bcosify. The perturbations are seeded (``seed``), so every
input gets the same ones; ``batch_size`` perturbed inputs go through the model at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import EvaluationError
from .._common import check_positive
from .base import Embedded, ImageExplainer, TextExplainerBase, captum, distinct_images
from .registry import register

__all__ = ["LimeExplainer", "LimeTextExplainer", "Replay", "WeightedRidge"]


def _check(n_samples: int, kernel_width: float, alpha: float, batch_size: int) -> None:
    check_positive(n_samples=n_samples, batch_size=batch_size)
    if not kernel_width > 0 or not alpha >= 0:
        raise EvaluationError(
            f"LIME needs kernel_width > 0 and alpha >= 0; got {kernel_width} and {alpha}"
        )


def _coin_flips(features: int, seed: int) -> Iterator[Tensor]:
    """The on/off vectors ``(1, features)``: each feature kept with probability 1/2, seeded."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield (torch.rand(1, features, generator=generator) < 0.5).long()


def _kernel(kept: float, features: int, width: float) -> Tensor:
    """The weight of a sample keeping ``kept`` of ``features``: an exponential kernel of the
    cosine distance of its on/off vector to the all-on one."""
    distance = 1 - math.sqrt(max(kept, 0.0) / features)
    return torch.tensor(math.exp(-(distance**2) / (2 * width**2)))


def _lime(
    forward: Callable[..., Tensor],
    alpha: float,
    similarity: Callable[..., Tensor],
    perturbations: Callable[..., Iterator[Tensor]],
    transform: Callable[..., Tensor],
) -> Any:
    """Captum's ``LimeBase`` sampling in the interpretable space, with the weighted ridge."""
    return captum().LimeBase(
        forward,
        interpretable_model=WeightedRidge(alpha),
        similarity_func=similarity,
        perturb_func=perturbations,
        perturb_interpretable_space=True,
        from_interp_rep_transform=transform,
        to_interp_rep_transform=None,
    )


@register("lime", "image")
class LimeExplainer(ImageExplainer):
    """LIME on ``patches x patches`` squares of the image (superpixels that need no
    segmentation library), replaced by ``baseline``. An image explained for several classes
    (the pointing game's grids) is perturbed and run through the model once, and its classes'
    regressions share the samples."""

    name = "lime"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_samples: int = 1000,
        patches: int = 8,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        baseline: float = 0.0,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        _check(n_samples, kernel_width, alpha, batch_size)
        check_positive(patches=patches)
        super().__init__(
            model,
            n_samples=n_samples,
            patches=patches,
            kernel_width=kernel_width,
            alpha=alpha,
            baseline=baseline,
            seed=seed,
            batch_size=batch_size,
        )

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        o = self.options
        height, width = inputs.shape[-2:]
        if o["patches"] > min(height, width):
            raise EvaluationError(
                f"LIME: {o['patches']} patches a side do not fit images of {height} x {width} "
                "pixels; pass a smaller patches="
            )
        rows = torch.arange(height, device=inputs.device) * o["patches"] // height
        columns = torch.arange(width, device=inputs.device) * o["patches"] // width
        square = rows[:, None] * o["patches"] + columns[None, :]  # (H, W): each pixel's feature
        features = o["patches"] ** 2

        # a generator function: Captum draws from it with next() (a function returning a
        # generator would be taken for one that returns a single sample)
        def perturbations(original: Tensor, **kwargs: Any) -> Iterator[Tensor]:
            yield from _coin_flips(features, o["seed"])

        def similarity(original: Tensor, perturbed: Tensor, on: Tensor, **kwargs: Any) -> Tensor:
            return _kernel(float(on.float().sum()), features, o["kernel_width"])

        def perturbed_image(on: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
            keep = on[0].to(original.device).bool()[square]
            return torch.where(keep, original, torch.full_like(original, o["baseline"]))

        unique, row = distinct_images(inputs)
        result = torch.empty_like(inputs)
        for u in range(len(unique)):
            forward, image = Replay(self.model), Replay(perturbed_image)
            lime = _lime(forward, o["alpha"], similarity, perturbations, image)
            for i in torch.nonzero(row == u).flatten().tolist():
                forward.rewind()
                image.rewind()
                coefficients = lime.attribute(
                    unique[u : u + 1],
                    target=int(target[i]),
                    n_samples=o["n_samples"],
                    perturbations_per_eval=o["batch_size"],
                )
                result[i] = coefficients.to(inputs.device)[square]
        # the coefficient of a square is on every channel: spread it, so the channel sum is it
        return result / inputs.shape[1]


@register("lime", "text")
class LimeTextExplainer(TextExplainerBase):
    """LIME on the tokens: a removed token's embedding is set to zero, padding is never a
    feature, and the kernel counts the kept tokens among the real ones."""

    name = "lime"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_samples: int = 200,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
    ) -> None:
        _check(n_samples, kernel_width, alpha, batch_size)
        super().__init__(
            model,
            n_samples=n_samples,
            kernel_width=kernel_width,
            alpha=alpha,
            seed=seed,
            batch_size=batch_size,
        )

    def _attribute(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        o = self.options
        forward = Embedded(self.model)
        embeddings = forward.embed(ids)
        result = torch.zeros(ids.shape, device=ids.device)
        for i in range(len(ids)):
            valid = mask[i].bool()
            count = int(valid.sum())
            row_ids, row_mask = ids[i : i + 1], mask[i : i + 1]

            def perturbations(
                original: Tensor, valid: Tensor = valid, **kwargs: Any
            ) -> Iterator[Tensor]:
                for on in _coin_flips(len(valid), o["seed"]):
                    yield on | (~valid.cpu()[None]).long()  # padding stays: it is not a feature

            def similarity(
                original: Tensor, perturbed: Tensor, on: Tensor, count: int = count, **kwargs: Any
            ) -> Tensor:
                kept = float(on.float().sum()) - (on.shape[-1] - count)
                return _kernel(kept, count, o["kernel_width"])

            def perturbed(on: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
                keep = on.to(original.device).bool()[..., None]
                return torch.where(keep, original, torch.zeros_like(original))

            def scores(
                batch: Tensor, row_ids: Tensor = row_ids, row_mask: Tensor = row_mask
            ) -> Tensor:
                return forward(
                    batch, row_ids.expand(len(batch), -1), row_mask.expand(len(batch), -1)
                )

            lime = _lime(scores, o["alpha"], similarity, perturbations, perturbed)
            coefficients = lime.attribute(
                embeddings[i : i + 1],
                target=int(target[i]),
                n_samples=o["n_samples"],
                perturbations_per_eval=o["batch_size"],
            )
            result[i] = coefficients.to(ids.device).flatten() * valid
        return result


class Replay:
    """A function that replays its results when the same arguments come again in the same order.

    LIME asks for the same perturbed images, and the model's scores of them, once per explained
    class: each is computed once, and :meth:`rewind` starts the next class's replay. A call is
    replayed only if its first argument equals the recorded one; otherwise it is computed anew.
    """

    def __init__(self, function: Callable[..., Tensor]) -> None:
        self.function = function
        self._recorded: list[tuple[Tensor, Tensor]] = []
        self._position = 0

    def rewind(self) -> None:
        self._position = 0

    @torch.no_grad()
    def __call__(self, key: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        position, self._position = self._position, self._position + 1
        if position < len(self._recorded):
            seen, result = self._recorded[position]
            if torch.equal(seen, key):
                return result
        result = self.function(key, *args, **kwargs)
        if position < len(self._recorded):
            self._recorded[position] = (key, result)
        else:
            self._recorded.append((key, result))
        return result


class WeightedRidge:
    """Weighted ridge regression with an unpenalised intercept, solved exactly.

    What scikit-learn's ``Ridge(alpha).fit(x, y, sample_weight=w)`` computes, the LIME
    package's interpretable model, in the interface Captum's ``Lime`` trains (``fit``,
    ``representation``, call): minimise ``sum_i w_i (y_i - b - x_i . c)^2 + alpha |c|^2``.
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.coefficients = torch.zeros(0)
        self.intercept = torch.zeros(())

    def fit(self, train_data: Any, **kwargs: Any) -> None:
        parts = list(zip(*train_data, strict=True))
        x, y, w = (torch.cat(part).double() for part in parts)
        y, w = y.flatten(), w.flatten()
        share = w / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
        x_mean, y_mean = share @ x, share @ y
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ (w[:, None] * xc) + self.alpha * torch.eye(x.shape[1], dtype=x.dtype)
        coefficients = torch.linalg.solve(gram, xc.T @ (w * yc))
        self.coefficients = coefficients.float()
        self.intercept = (y_mean - x_mean @ coefficients).float()

    def representation(self) -> Tensor:
        return self.coefficients

    def __call__(self, x: Tensor) -> Tensor:
        return x.float() @ self.coefficients + self.intercept
