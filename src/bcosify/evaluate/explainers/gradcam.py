"""GradCAM (Selvaraju et al., 2017), by Captum: the feature map of a layer weighted by the
gradient of the target's score averaged over it, one map per image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...device import device_of
from ...errors import EvaluationError
from ...explain.core import _evaluation
from .._common import check_positive
from .base import ImageExplainer, captum
from .registry import register

__all__ = ["GradCamExplainer", "gradcam_layer"]


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


@register("gradcam", "image")
class GradCamExplainer(ImageExplainer):
    """GradCAM on ``layer`` (the deepest feature map at least ``min_resolution`` pixels a side by
    default, see :func:`gradcam_layer`; a module or its dotted name), rectified with ``relu``,
    upsampled bilinearly to the input size."""

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
        method = captum()
        if self.layer is None:
            # found on first use: it takes a forward pass, so it needs an input of the right size
            self.layer_name, self.layer = gradcam_layer(
                self.model, inputs[:1], min_resolution=self._min_resolution
            )
            self.options["layer"] = self.layer_name
        cam = method.LayerGradCam(self.model, self.layer).attribute(
            inputs, target=target, relu_attributions=self.options["relu"]
        )
        if not isinstance(cam, Tensor) or cam.ndim != 4:
            raise EvaluationError(
                f"GradCAM needs a layer with a 4-D output (N, C, h, w); {self.layer_name!r} "
                "gives another; pass layer= with a convolution"
            )
        cam = method.LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]), "bilinear")
        return cam / inputs.shape[1]
