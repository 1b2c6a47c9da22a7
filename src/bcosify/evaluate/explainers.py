"""Attribution methods behind one interface: the B-cos model's own explanation and baselines.

Every explainer is built for a model that takes images in ``[0, 1]`` (a :class:`BcosModel`, or an
ordinary model wrapped in :class:`bcosify.train.Normalized`), and its ``attribute(inputs,
target)`` returns float32 attributions shaped like ``inputs``, detached. The model is explained
in evaluation mode; afterwards every module's train/eval flag and explanation mode are what they
were, and no gradient or hook is left on the model or the inputs.

Post-hoc methods explain the model's ordinary forward pass (explanation mode off), also on a
B-cos model. Methods whose result is one map per image (GradCAM, RISE) return the map divided by
the number of channels on every channel, so that the channel sum, which the metrics use, is the
map itself.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import BcosAttribution, _evaluation
from ..nn import explanation_mode
from ._common import (
    check_batch,
    check_positive,
    has_bcos_layers,
    probabilities,
    resolve_probability,
)

__all__ = ["EXPLAINER_NAMES", "Explainer", "build_explainer", "gradcam_layer"]

EXPLAINER_NAMES: tuple[str, ...] = (
    "bcos",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "gradcam",
    "deeplift",
    "occlusion",
    "lime",
    "rise",
)

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
    """An attribution method for one model.

    ``attribute(inputs, target)`` takes images ``(N, 3, H, W)`` in ``[0, 1]`` and one class
    index per image ``(N,)``, and returns attributions shaped like ``inputs``: detached,
    float32, with no gradient, hook or mode flag left behind on the model.
    """

    name: str

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor: ...


class _Explainer:
    """Checks the batch, runs the method in evaluation mode, and leaves the model as found."""

    name = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.options: dict[str, Any] = {}

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        x, targets = check_batch(inputs, target, self.name)
        device = device_of(self.model)
        with posthoc(self.model):
            result = self._attribute(x.to(device), targets.to(device))
        # one map per image (GradCAM, RISE) comes as (N, 1, H, W) and goes to every channel
        result = result.detach().to(device=inputs.device, dtype=torch.float32)
        return result.expand_as(inputs).contiguous()

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name!r}{', ' if options else ''}{options})"


class _BcosExplainer(_Explainer):
    name = "bcos"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if not has_bcos_layers(model):
            raise EvaluationError(
                f"the 'bcos' explainer is the model's own dynamic-linear explanation and needs a "
                f"B-cos model (with BcosConv2d / BcosLinear layers), but this "
                f"{type(model).__name__} has none. Convert it with bcosify.convert(model, "
                "input_mean=..., input_std=...) and fine-tune it, or explain it with a post-hoc "
                f"method: {', '.join(EXPLAINER_NAMES[1:])}"
            )
        self._method = BcosAttribution(model)

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        # explain() switches explanation mode on inside the "off" of the base class, and back
        return self._method.attribute(inputs, target=target)


class _CaptumExplainer(_Explainer):
    """A Captum attribution method called as ``method.attribute(inputs, target=..., **options)``."""

    def __init__(self, name: str, model: nn.Module, method: Any, **options: Any) -> None:
        super().__init__(model)
        self.name = name
        self.options = options
        self._method = method

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        return self._method.attribute(inputs, target=target, **self.options)


@contextlib.contextmanager
def posthoc(model: nn.Module) -> Iterator[None]:
    """The model as a post-hoc method sees it: in evaluation mode, explanation mode off, and
    Captum's notices about it silenced; put back as found afterwards."""
    with _evaluation(model), explanation_mode(model, enabled=False), warnings.catch_warnings():
        for notice in _CAPTUM_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        yield


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError:
        raise EvaluationError(
            "the post-hoc explainers need Captum: pip install 'bcosify[captum]'"
        ) from None
    return captum.attr


def _saliency(model: nn.Module, *, absolute: bool = True) -> Explainer:
    return _CaptumExplainer("saliency", model, _captum().Saliency(model), abs=absolute)


def _input_x_gradient(model: nn.Module) -> Explainer:
    return _CaptumExplainer("input_x_gradient", model, _captum().InputXGradient(model))


def _integrated_gradients(
    model: nn.Module,
    *,
    n_steps: int = 50,
    internal_batch_size: int | None = 64,
    baseline: float = 0.0,
) -> Explainer:
    check_positive(n_steps=n_steps)
    if internal_batch_size is not None:
        check_positive(internal_batch_size=internal_batch_size)
    return _CaptumExplainer(
        "integrated_gradients",
        model,
        _captum().IntegratedGradients(model),
        baselines=baseline,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
    )


def gradcam_layer(
    model: nn.Module, example: Tensor, *, min_resolution: int = 7
) -> tuple[str, nn.Module]:
    """The layer GradCAM explains by default: the deepest feature map that is fine enough.

    One forward pass of ``example`` (no gradients, evaluation mode) records every submodule
    with a 4-D output, in the order their forward passes finish (a block after the layers in
    it). The last one whose output is at least ``min_resolution`` pixels high and wide is
    taken: the rectified output of the deepest convolutional stage that is still that fine
    (a block or its activation, as GradCAM uses: a convolution's own output, before its batch
    norm and ReLU, carries offsets that spread the map evenly), such as a ResNet's ``layer4``
    at 224 px. GradCAM's map has the layer's resolution: the last stage of a small network on
    small images can be 2 x 2, too coarse to localise anything. When no output is that fine,
    the last of the finest is taken. When the last convolution to run is 1x1 with one output
    channel per class, it is the classifier (B-cos conversion applies the linear classifier
    before the global pooling): only what finishes before it starts counts. In a model traced
    into a flat graph (a converted B-cos model), only the leaf layers run as modules.

    Returns:
        The layer's dotted name in ``model`` and the layer.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        ...                       nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> gradcam_layer(model, torch.rand(1, 3, 20, 20))[0]  # 18, 18, 9, 7, 7, classifier
        '4'
        >>> gradcam_layer(model, torch.rand(1, 3, 16, 16))[0]  # 14, 14, 7, 5, 5: '4' too coarse
        '2'
    """
    check_positive(min_resolution=min_resolution)
    names = {id(m): name for name, m in model.named_modules()}
    # (module, None) when a forward pass starts, (module, side) when one with a 4-D output ends
    events: list[tuple[nn.Module, int | None]] = []

    def start(module: nn.Module, args: object) -> None:
        events.append((module, None))

    def finish(module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, Tensor) and output.ndim == 4:
            events.append((module, min(output.shape[-2:])))

    handles = []
    for module in model.modules():
        if module is not model:
            handles.append(module.register_forward_pre_hook(start))
            handles.append(module.register_forward_hook(finish))
    try:
        with _evaluation(model), torch.no_grad():
            logits = model(example.to(device_of(model)))
    finally:
        for handle in handles:
            handle.remove()
    classes = logits.shape[-1] if isinstance(logits, Tensor) and logits.ndim == 2 else None
    convolutions = [
        i for i, (m, side) in enumerate(events) if side is None and isinstance(m, nn.Conv2d)
    ]
    if convolutions:  # the last convolution to run may be the classifier
        last = events[convolutions[-1]][0]
        if last.kernel_size == (1, 1) and last.out_channels == classes:
            events = events[: convolutions[-1]]
    finished = [(module, side) for module, side in events if side is not None]
    if not finished:
        raise EvaluationError(
            f"GradCAM found no layer with a 4-D output in {type(model).__name__}'s forward "
            "pass; pass the layer to explain: build_explainer('gradcam', model, layer=...) with "
            "a module of the model or its dotted name"
        )
    fine = [m for m, side in finished if side >= min_resolution]
    finest = max(side for _, side in finished)
    layer = fine[-1] if fine else [m for m, side in finished if side == finest][-1]
    return names[id(layer)], layer


class _GradCamExplainer(_Explainer):
    name = "gradcam"

    def __init__(
        self,
        model: nn.Module,
        *,
        layer: nn.Module | str | None = None,
        relu: bool = True,
        min_resolution: int = 7,
    ) -> None:
        super().__init__(model)
        check_positive(min_resolution=min_resolution)
        self._min_resolution = min_resolution
        self.layer: nn.Module | None = None
        self.layer_name: str | None = None
        if isinstance(layer, str):
            try:
                self.layer, self.layer_name = model.get_submodule(layer), layer
            except AttributeError:
                raise EvaluationError(
                    f"GradCAM: {type(model).__name__} has no submodule {layer!r}; pass a name "
                    "from model.named_modules() or the module itself"
                ) from None
        elif layer is not None:
            names = {id(m): name for name, m in model.named_modules()}
            if id(layer) not in names:
                raise EvaluationError(
                    f"GradCAM: the layer {type(layer).__name__} is not a submodule of the "
                    f"explained {type(model).__name__}"
                )
            self.layer, self.layer_name = layer, names[id(layer)]
        self.options = {"layer": self.layer_name, "relu": relu}

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        captum = _captum()
        if self.layer is None:
            # found on first use: it takes a forward pass, so it needs an input of the right size
            self.layer_name, self.layer = gradcam_layer(
                self.model, inputs[:1], min_resolution=self._min_resolution
            )
            self.options["layer"] = self.layer_name
        cam = captum.LayerGradCam(self.model, self.layer).attribute(
            inputs, target=target, relu_attributions=self.options["relu"]
        )
        if not isinstance(cam, Tensor) or cam.ndim != 4:
            raise EvaluationError(
                f"GradCAM needs a layer with a 4-D output (N, C, h, w); {self.layer_name!r} "
                "gives another; pass layer= with a convolution"
            )
        cam = captum.LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), "bilinear")
        return cam / inputs.shape[1]


class _DeepLiftExplainer(_Explainer):
    name = "deeplift"

    def __init__(self, model: nn.Module, *, baseline: float = 0.0) -> None:
        super().__init__(model)
        self.options = {"baselines": baseline}
        self._checked = False

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        captum = _captum()
        if not self._checked:
            _check_single_use(self.model, inputs[:1])
            self._checked = True
        try:
            return captum.DeepLift(self.model).attribute(inputs, target=target, **self.options)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError) as error:
            raise EvaluationError(
                f"Captum's DeepLift failed on {type(self.model).__name__}: {error}\nDeepLift "
                "replaces the gradient of each non-linear module (nn.ReLU, nn.MaxPool2d, ...) "
                "and needs every one of them to be its own module, called once per forward "
                "pass; functional calls (F.relu, torch.relu) are not seen. Rewrite the model "
                "that way, or use another explainer."
            ) from error


def _check_single_use(model: nn.Module, example: Tensor) -> None:
    """Refuse models that call a DeepLift non-linearity more than once per forward pass.

    Captum keeps one input and output per module, so a reused module (torchvision's ResNet
    blocks reuse ``self.relu``) makes it fail or compute with the wrong activations.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    counts: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    handles = [
        module.register_forward_pre_hook(count(name))
        for name, module in model.named_modules()
        if type(module) in SUPPORTED_NON_LINEAR
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    reused = {name: n for name, n in counts.items() if n > 1}
    if reused:
        listed = ", ".join(f"'{name}' ({n} times)" for name, n in sorted(reused.items()))
        raise EvaluationError(
            f"DeepLift cannot explain this {type(model).__name__}: the non-linear module(s) "
            f"{listed} are called more than once per forward pass, and Captum's DeepLift keeps "
            "one set of activations per module. Give every use its own module (e.g. a fresh "
            "nn.ReLU per call), or use another explainer."
        )


class _OcclusionExplainer(_Explainer):
    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        baseline: float = 0.0,
        perturbations_per_eval: int = 16,
    ) -> None:
        super().__init__(model)
        check_positive(perturbations_per_eval=perturbations_per_eval)
        self._window = None if window is None else _pair("window", window)
        self._stride = None if stride is None else _pair("stride", stride)
        self.options = {
            "window": self._window,
            "stride": self._stride,
            "baselines": baseline,
            "perturbations_per_eval": perturbations_per_eval,
        }

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        channels, height, width = inputs.shape[1:]
        window = self._window or (max(1, round(height / 8)), max(1, round(width / 8)))
        stride = self._stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        if window[0] > height or window[1] > width:
            raise EvaluationError(
                f"occlusion window {window} is larger than the images ({height}, {width}); "
                "pass a smaller window="
            )
        # Every occluded forward pass gives the scores of all classes: each distinct image is
        # occluded once and its attributions for all the classes asked of it come out together
        # (Captum attributes every element of a multi-output forward function; the pointing
        # game explains each grid for four classes).
        unique, row = distinct_images(inputs)
        classes = [sorted(set(target[row == u].tolist())) for u in range(len(unique))]
        width = max(map(len, classes))
        table = torch.tensor([c + c[:1] * (width - len(c)) for c in classes], device=inputs.device)

        def scores(batch: Tensor) -> Tensor:
            # Captum stacks the perturbed copies of all distinct images along the batch
            return self.model(batch).gather(1, table.repeat(len(batch) // len(unique), 1))

        attributions = (
            _captum()
            .Occlusion(scores)
            .attribute(
                unique,
                sliding_window_shapes=(channels, *window),
                strides=(channels, *stride),
                baselines=self.options["baselines"],
                target=None,
                perturbations_per_eval=self.options["perturbations_per_eval"],
            )
        )
        attributions = attributions.view(len(unique), width, *inputs.shape[1:])
        column = [classes[u].index(t) for u, t in zip(row.tolist(), target.tolist(), strict=True)]
        return attributions[row, torch.tensor(column, device=row.device)]


class _LimeExplainer(_Explainer):
    """LIME (Ribeiro et al., 2016) with Captum's ``LimeBase``, as the original LIME package does it.

    The interpretable features are ``patches x patches`` squares of the image (superpixels
    that need no segmentation library); each of ``n_samples`` perturbed images keeps every
    square with probability 1/2 and sets the others to ``baseline``; the samples are weighted
    by an exponential kernel of the cosine distance of their on/off vector to the all-on one
    (width ``kernel_width``), and a weighted ridge regression (``alpha``, with an intercept)
    of the target's score on the on/off vectors gives one coefficient per square. These are
    the LIME package's choices for images (ridge with alpha 1, kernel width 0.25, 1000
    samples); Captum's own default, a Lasso from scikit-learn, is not a dependency of bcosify.

    The perturbations are seeded: every image gets the same ones, so an image explained for
    several classes (the pointing game's grids) is perturbed and run through the model once,
    and its classes' regressions share the samples.
    """

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
        super().__init__(model)
        check_positive(n_samples=n_samples, patches=patches, batch_size=batch_size)
        if not kernel_width > 0 or not alpha >= 0:
            raise EvaluationError(
                f"LIME needs kernel_width > 0 and alpha >= 0; got {kernel_width} and {alpha}"
            )
        self.options = {
            "n_samples": n_samples,
            "patches": patches,
            "kernel_width": kernel_width,
            "alpha": alpha,
            "baseline": baseline,
            "seed": seed,
            "batch_size": batch_size,
        }

    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        captum = _captum()
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

        def perturbations(original: Tensor, **kwargs: Any) -> Any:
            generator = torch.Generator().manual_seed(o["seed"])
            while True:
                yield (torch.rand(1, features, generator=generator) < 0.5).long()

        def similarity(original: Tensor, perturbed: Tensor, on: Tensor, **kwargs: Any) -> Tensor:
            # the cosine distance of a 0/1 vector with k ones to the all-ones vector
            distance = 1 - torch.sqrt(on.float().sum() / features)
            return torch.exp(-(distance**2) / (2 * o["kernel_width"] ** 2))

        def perturbed_image(on: Tensor, original: Tensor, **kwargs: Any) -> Tensor:
            keep = on[0].to(original.device).bool()[square]
            return torch.where(keep, original, torch.full_like(original, o["baseline"]))

        unique, row = distinct_images(inputs)
        result = torch.empty_like(inputs)
        for u in range(len(unique)):
            forward, image = _Replay(self.model), _Replay(perturbed_image)
            lime = captum.LimeBase(
                forward,
                interpretable_model=_WeightedRidge(o["alpha"]),
                similarity_func=similarity,
                perturb_func=perturbations,
                perturb_interpretable_space=True,
                from_interp_rep_transform=image,
                to_interp_rep_transform=None,
            )
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


class _Replay:
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


class _WeightedRidge:
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


class _RiseExplainer(_Explainer):
    """RISE (Petsiuk et al., 2018): the class probability of randomly masked images, as weights.

    Each mask is a ``cells x cells`` grid of independent coin flips (keep with probability
    ``keep``), upsampled bilinearly to ``cells + 1`` cells of ``ceil(size / cells)`` pixels and
    cropped at a random shift, so its edges are soft and fall anywhere. The saliency of a pixel
    is ``sum_i p_c(x * M_i) M_i / (n_masks * keep)``; ``centred=True`` subtracts the mean
    probability over the masks from every ``p_c(x * M_i)`` first, so that the map is positive
    where keeping the pixel raises the probability above average and negative where it lowers
    it, instead of positive everywhere around the constant ``mean(p_c)``: metrics that count
    positive attribution (the pointing game, localisation in a mask) see the evidence, not the
    constant. The order of the pixels, which deletion uses, barely changes.
    """

    name = "rise"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_masks: int = 2000,
        cells: int = 7,
        keep: float = 0.5,
        seed: int = 0,
        batch_size: int = 256,
        probability: str = "auto",
        centred: bool = False,
    ) -> None:
        super().__init__(model)
        check_positive(n_masks=n_masks, cells=cells, batch_size=batch_size)
        if not 0.0 < keep < 1.0:
            raise EvaluationError(f"RISE keep must be in (0, 1), got {keep}")
        self.options = {
            "n_masks": n_masks,
            "cells": cells,
            "keep": keep,
            "seed": seed,
            "batch_size": batch_size,
            "probability": resolve_probability(model, probability),
            "centred": bool(centred),
        }

    @torch.no_grad()
    def _attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        o = self.options
        count, (height, width) = inputs.shape[0], inputs.shape[-2:]
        # drawn up front, so that the masks depend on the seed only, not on the batching
        generator = torch.Generator().manual_seed(o["seed"])
        grids = torch.rand(o["n_masks"], 1, o["cells"], o["cells"], generator=generator)
        grids = (grids < o["keep"]).float()
        cell_h, cell_w = math.ceil(height / o["cells"]), math.ceil(width / o["cells"])
        shift_y = torch.randint(cell_h, (o["n_masks"],), generator=generator).tolist()
        shift_x = torch.randint(cell_w, (o["n_masks"],), generator=generator).tolist()
        # one masked forward pass gives every class's score: an image that appears several
        # times (explained for several classes, as in the pointing game) is masked only once
        unique, row = distinct_images(inputs)
        saliency = inputs.new_zeros(count, height, width)
        coverage = inputs.new_zeros(height, width)  # sum_i M_i
        total = inputs.new_zeros(count)  # sum_i p_c(x * M_i)
        step = max(1, o["batch_size"] // len(unique))
        for start in range(0, o["n_masks"], step):
            stop = min(start + step, o["n_masks"])
            upsampled = F.interpolate(
                grids[start:stop].to(inputs.device),
                size=((o["cells"] + 1) * cell_h, (o["cells"] + 1) * cell_w),
                mode="bilinear",
                align_corners=False,
            )
            shifts = zip(shift_y[start:stop], shift_x[start:stop], strict=True)
            masks = torch.stack(
                [upsampled[i, 0, y : y + height, x : x + width] for i, (y, x) in enumerate(shifts)]
            )
            masked = (unique[:, None] * masks[None, :, None]).flatten(0, 1)
            scores = probabilities(self.model(masked), o["probability"])
            scores = scores.view(len(unique), stop - start, -1)[row]
            weights = scores.gather(2, target.view(count, 1, 1).expand(-1, stop - start, 1))
            saliency += torch.einsum("nm,mhw->nhw", weights.squeeze(2), masks)
            coverage += masks.sum(0)
            total += weights.squeeze(2).sum(1)
        if o["centred"]:  # sum_i (p_i - mean p) M_i
            saliency -= (total / o["n_masks"])[:, None, None] * coverage
        saliency /= o["n_masks"] * o["keep"]
        return saliency[:, None] / inputs.shape[1]


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


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise EvaluationError(f"{name} must be an int or (height, width), got {value!r}")
    check_positive(**{f"{name} height": pair[0], f"{name} width": pair[1]})
    return pair  # type: ignore[return-value]


_FACTORIES: dict[str, Callable[..., Explainer]] = {
    "bcos": _BcosExplainer,
    "saliency": _saliency,
    "input_x_gradient": _input_x_gradient,
    "integrated_gradients": _integrated_gradients,
    "gradcam": _GradCamExplainer,
    "deeplift": _DeepLiftExplainer,
    "occlusion": _OcclusionExplainer,
    "lime": _LimeExplainer,
    "rise": _RiseExplainer,
}


def build_explainer(name: str, model: nn.Module, **options: Any) -> Explainer:
    """The explainer ``name`` for ``model``, a model that takes images in ``[0, 1]``.

    Names and options (defaults in brackets):

    - ``"bcos"``: the model's own explanation, contributions ``x * W(x)`` folded to RGB; B-cos
      models only. No options.
    - ``"saliency"``: the input gradient, ``absolute`` [True] takes its absolute value.
    - ``"input_x_gradient"``: input times gradient. No options.
    - ``"integrated_gradients"``: ``n_steps`` [50], ``internal_batch_size`` [64] (images per
      forward pass), ``baseline`` [0.0].
    - ``"gradcam"``: GradCAM on ``layer`` [the deepest feature map at least ``min_resolution``
      [7] pixels a side, see :func:`gradcam_layer`] (a module or its dotted name), ``relu``
      [True]; upsampled bilinearly to the input size.
    - ``"deeplift"``: ``baseline`` [0.0]. Needs every ReLU/pooling non-linearity to be its own
      module called once per forward pass, and refuses models where one is reused. On a B-cos
      model the B-cos units are treated through their gradient.
    - ``"occlusion"``: ``window`` [1/8 of the image side], ``stride`` [half the window],
      ``baseline`` [0.0], ``perturbations_per_eval`` [16]; the change of the target logit.
    - ``"lime"``: Captum's LIME on ``patches x patches`` squares [8], ``n_samples`` [1000],
      ``kernel_width`` [0.25], ridge ``alpha`` [1.0], ``baseline`` [0.0], ``seed`` [0],
      ``batch_size`` [256] (perturbed images per forward pass); the LIME package's defaults.
    - ``"rise"``: ``n_masks`` [2000], ``cells`` [7], ``keep`` [0.5], ``seed`` [0],
      ``batch_size`` [256] (masked images per forward pass), ``probability`` ["auto":
      sigmoid for B-cos models, softmax otherwise], ``centred`` [False: as published; True
      subtracts the mean probability, see RISE's class].

    GradCAM, LIME and RISE give one map per image; it is returned divided by the number of
    channels on every channel, so the channel sum is the map.

    Raises:
        EvaluationError: for an unknown name or option, or a model the method cannot explain.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> explainer = build_explainer("saliency", model)
        >>> explainer.attribute(torch.rand(2, 3, 8, 8), torch.tensor([0, 3])).shape
        torch.Size([2, 3, 8, 8])
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise EvaluationError(
            f"unknown explainer {name!r}; choose one of {', '.join(EXPLAINER_NAMES)}"
        )
    if not isinstance(model, nn.Module):
        raise EvaluationError(f"explainers need a torch.nn.Module, got {type(model).__name__}")
    accepted = [p for p in inspect.signature(factory).parameters if p != "model"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EvaluationError(
            f"explainer {name!r} has no option(s) {', '.join(unknown)}; it takes "
            + (", ".join(accepted) if accepted else "no options")
        )
    return factory(model, **options)
