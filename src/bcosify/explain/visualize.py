"""Pictures of explanations: the B-cos colour image and signed contribution maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..errors import ExplanationError
from ..serialization import atomic_write
from .core import Explanation

if TYPE_CHECKING:  # matplotlib is imported where a picture is drawn: import bcosify stays fast
    from matplotlib.figure import Figure

# what a colour explanation is laid over when it is saved; None: kept RGBA
Background = Literal["black", "white"] | None

__all__ = [
    "colour_explanation",
    "composite",
    "contribution_map_image",
    "explanation_colours",
    "explanation_figure",
    "save_colour_explanation",
    "save_contribution_map",
    "save_figure",
    "save_image",
]


def colour_explanation(
    inputs: Tensor, weights: Tensor, *, smooth: int = 0, percentile: float = 99.5
) -> Tensor:
    """The B-cos colour explanation: RGBA images in ``[0, 1]``, shape ``(N, H, W, 4)``.

    From the encoded input ``[x, 1 - x]`` and the dynamic weights ``W`` (both ``(N, 6, H, W)``;
    a single image ``(6, H, W)`` is accepted too):

    1. contribution per pixel = sum over channels of ``inputs * W``;
    2. ``W`` is divided per pixel by its largest absolute value over channels, clamped at 0;
    3. colour ``k`` is ``W_k / (W_k + W_{k+3})``: the weight on ``x_k`` against ``1 - x_k``;
    4. alpha is the L2 norm of ``W`` over the six channels, 0 where the contribution is negative;
    5. alpha is optionally smoothed by a ``smooth x smooth`` average pool (stride 1, same size;
       the B-cos papers use 15 at 224 px); ``smooth <= 1`` turns smoothing off;
    6. alpha is divided by its ``percentile``-th percentile per image and clipped to ``[0, 1]``.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 8, 8)
        >>> rgba = colour_explanation(torch.cat([x, 1 - x], 1), torch.randn(2, 6, 8, 8))
        >>> rgba.shape, bool(rgba.min() >= 0 and rgba.max() <= 1)
        (torch.Size([2, 8, 8, 4]), True)
    """
    single = inputs.ndim == 3
    if single:
        inputs, weights = inputs[None], weights[None]
    if inputs.shape != weights.shape or inputs.ndim != 4 or inputs.shape[1] != 6:
        raise ExplanationError(
            "colour_explanation needs the encoded input and the weights, both (N, 6, H, W); got "
            f"{tuple(inputs.shape)} and {tuple(weights.shape)}. Use Explanation.inputs and "
            "Explanation.weights of a model that encodes its input as [x, 1 - x]."
        )
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    inputs, weights = inputs.detach().float(), weights.detach().float()
    contribution = (inputs * weights).sum(1, keepdim=True)
    rgb = explanation_colours(weights)
    alpha = weights.norm(p=2, dim=1, keepdim=True)
    alpha = torch.where(contribution < 0, torch.zeros_like(alpha), alpha)
    if smooth > 1:
        alpha = _box_blur(alpha, smooth)
    top = torch.quantile(alpha.flatten(1), percentile / 100.0, dim=1).clamp_min(1e-12)
    alpha = (alpha / top.view(-1, 1, 1, 1)).clamp(0, 1)
    rgba = torch.cat([rgb, alpha], 1).permute(0, 2, 3, 1)
    return rgba[0] if single else rgba


def explanation_colours(weights: Tensor) -> Tensor:
    """The colour each pixel's weights point to, ``(N, 3, H, W)`` in ``[0, 1]``.

    Steps 2 and 3 of :func:`colour_explanation`: ``W`` divided per pixel by its largest absolute
    value over the six channels and clamped at 0, then ``W_k / (W_k + W_{k+3})``. Weights aligned
    with the encoded input ``[x, 1 - x]`` give back ``x``.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 4, 4)
        >>> torch.allclose(explanation_colours(torch.cat([x, 1 - x], 1) * 5.0), x, atol=1e-5)
        True
    """
    weights = weights.detach().float()
    scaled = (weights / (weights.abs().amax(1, keepdim=True) + 1e-12)).clamp_min(0)
    return scaled[:, :3] / (scaled[:, :3] + scaled[:, 3:] + 1e-12)


def contribution_map_image(
    contribution_map: Tensor, *, cmap: str = "bwr", percentile: float = 99.5
) -> Tensor:
    """A signed contribution map as RGBA images ``(N, H, W, 4)`` in ``[0, 1]``.

    Positive evidence is red, negative blue, zero white (with the default ``bwr`` colour map); the
    colour scale is symmetric around zero and saturates at the ``percentile`` of ``|map|`` per
    image. A single ``(H, W)`` map gives ``(H, W, 4)``.

    Example:
        >>> import torch
        >>> contribution_map_image(torch.randn(2, 8, 8)).shape
        torch.Size([2, 8, 8, 4])
    """
    single = contribution_map.ndim == 2
    maps = contribution_map.detach().float()
    if single:
        maps = maps[None]
    if maps.ndim != 3:
        raise ExplanationError(
            f"a contribution map is (N, H, W) or (H, W), got {tuple(contribution_map.shape)}"
        )
    limit = torch.quantile(maps.abs().flatten(1), percentile / 100.0, dim=1).clamp_min(1e-12)
    normalised = (maps / limit.view(-1, 1, 1)).clamp(-1, 1) * 0.5 + 0.5
    import matplotlib

    colours = matplotlib.colormaps[cmap](normalised.cpu().numpy())
    rgba = torch.from_numpy(colours).float()
    return rgba[0] if single else rgba


def save_image(path: str | Path, image: Tensor) -> Path:
    """Write an ``(H, W, 3|4)`` image in ``[0, 1]`` (or ``(3, H, W)`` RGB) as a PNG.

    Example:
        >>> import torch, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "x.png"
        >>> save_image(out, torch.rand(4, 4, 4)).exists()
        True
    """
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = image.permute(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"save_image needs an (H, W, 3|4) image, got {tuple(image.shape)}")
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    # a new file renamed into place: a link planted at ``path`` is replaced, not written through
    atomic_write(path, lambda temporary: picture.save(temporary, format=kind))
    return path


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG, atomically (a new file renamed into place).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "f.png"
        >>> from matplotlib.figure import Figure
        >>> save_figure(Figure(), out).exists()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))
    return path


def save_colour_explanation(
    path: str | Path,
    inputs: Tensor,
    weights: Tensor,
    *,
    smooth: int = 0,
    percentile: float = 99.5,
    upscale: int = 1,
    background: Background = "black",
) -> Path:
    """Write the colour explanation of one image (``(6, H, W)`` tensors) as a PNG.

    ``upscale`` enlarges small images (nearest neighbour) so that they are easy to look at.
    The explanation is composited on ``background`` (black, as the B-cos papers show it, or
    white) and written as RGB, so that every viewer shows the same picture; ``None`` writes the
    RGBA image itself, whose look then depends on what the viewer puts behind it.

    Example:
        >>> import torch, tempfile, pathlib
        >>> x = torch.rand(3, 8, 8)
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "e.png"
        >>> save_colour_explanation(out, torch.cat([x, 1 - x]), torch.randn(6, 8, 8)).exists()
        True
    """
    rgba = colour_explanation(inputs, weights, smooth=smooth, percentile=percentile)
    image = rgba if background is None else composite(rgba, background)
    return save_image(path, _upscale(image, upscale))


def composite(rgba: Tensor, background: Literal["black", "white"] = "black") -> Tensor:
    """An ``(..., H, W, 4)`` RGBA image laid over a black or white background, as RGB.

    Example:
        >>> import torch
        >>> composite(torch.tensor([[[1.0, 0.5, 0.0, 0.5]]])).tolist()
        [[[0.5, 0.25, 0.0]]]
    """
    if background not in ("black", "white"):
        raise ValueError(f"background must be 'black' or 'white', got {background!r}")
    alpha = rgba[..., 3:]
    under = 0.0 if background == "black" else 1.0
    return rgba[..., :3] * alpha + under * (1 - alpha)


def save_contribution_map(
    path: str | Path,
    contribution_map: Tensor,
    *,
    cmap: str = "bwr",
    percentile: float = 99.5,
    upscale: int = 1,
) -> Path:
    """Write one signed ``(H, W)`` contribution map as a PNG (red positive, blue negative).

    Example:
        >>> import torch, tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.png"
        >>> save_contribution_map(out, torch.randn(8, 8)).exists()
        True
    """
    rgba = contribution_map_image(contribution_map, cmap=cmap, percentile=percentile)
    return save_image(path, _upscale(rgba, upscale))


def explanation_figure(
    explanation: Explanation,
    index: int = 0,
    *,
    smooth: int = 0,
    percentile: float = 99.5,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """A figure for one example: the image, its colour explanation and the signed map.

    The contribution map has a colour bar in logit units, and the title gives the explained
    class (by name when ``class_names`` are given) and score, so the picture can be read
    without the code; ``title`` replaces what is explained (e.g. a CLIP prompt). Save it with
    ``fig.savefig(path)``.

    Example:
        >>> import torch
        >>> from bcosify.explain import explain
        >>> from bcosify.nn import BcosConv2d, InputEncoding
        >>> model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 3, padding=1),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> e = explain(model, torch.rand(1, 3, 8, 8), target=1)
        >>> fig = explanation_figure(e, class_names=["square", "circle"])
        >>> len(fig.axes), fig.get_suptitle().startswith("class circle (1), score")
        (4, True)
    """
    inputs, weights = explanation.inputs[index], explanation.weights[index]
    cmap_limit = explanation.contribution_map[index].abs().flatten()
    limit = float(torch.quantile(cmap_limit.float(), percentile / 100.0).clamp_min(1e-12))
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    if inputs.shape[0] == 6:
        axes[0].imshow(inputs[:3].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        rgba = colour_explanation(inputs, weights, smooth=smooth, percentile=percentile)
        # on black, as the B-cos papers show it and as every saved picture is composited
        axes[1].imshow(composite(rgba).cpu().numpy())
    else:
        axes[1].text(0.5, 0.5, "needs an [x, 1 - x] input", ha="center", va="center")
    shown = axes[2].imshow(
        explanation.contribution_map[index].float().cpu().numpy(),
        cmap="bwr",
        vmin=-limit,
        vmax=limit,
    )
    fig.colorbar(shown, ax=axes[2], label="contribution to the score")
    panels = ("input", "colour explanation", "contribution map")
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel)
        ax.set_axis_off()
    what = _what(explanation, index, class_names, title)
    fig.suptitle(f"{what}score {float(explanation.scores[index]):.3f}")
    return fig


def _what(
    explanation: Explanation, index: int, class_names: Sequence[str] | None, title: str | None
) -> str:
    """What is explained, for a title: the given text, or the class by name and index."""
    if title is not None:
        return f"{title}, "
    if explanation.targets is None:
        return ""
    target = int(explanation.targets[index])
    if class_names is not None and 0 <= target < len(class_names):
        return f"class {class_names[target]} ({target}), "
    return f"class {target}, "


def _box_blur(alpha: Tensor, k: int) -> Tensor:
    """Average pool with stride 1 that keeps the size (asymmetric padding for even ``k``)."""
    left = (k - 1) // 2
    padded = F.pad(alpha, (left, k - 1 - left, left, k - 1 - left))
    return F.avg_pool2d(padded, k, stride=1)


def _upscale(image: Tensor, factor: int) -> Tensor:
    if factor <= 1:
        return image
    return image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
