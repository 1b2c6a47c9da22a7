"""A built-in synthetic dataset: ten shapes of random colour, size, position and rotation.

Each example is rendered on the fly from ``(seed, split, index)``, so it is the same image in every
process (DataLoader workers included) and no data is ever stored or downloaded. Every example has
the segmentation mask of its object, which is what localisation metrics of explanations need.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .folder import mask_folder_for

__all__ = ["SHAPES", "SPLITS", "SyntheticShapes", "write_image_folder"]

# Sorted by name: an image folder written from this dataset is read back with the same labels,
# because folder loaders (ours and torchvision's) number the class folders in sorted order.
SHAPES: tuple[str, ...] = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "heart",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")


def _circle(radius: float, cx: float = 0.0, points: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + radius * np.cos(t), radius * np.sin(t)], 1)


def _regular(corners: int, radius: float, phase: float = np.pi / 2) -> np.ndarray:
    t = phase + np.linspace(0, 2 * np.pi, corners, endpoint=False)
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    radii = np.tile([outer, inner], points)
    t = np.pi / 2 + np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], 1)


def _cross(arm: float = 0.95, half_width: float = 0.28) -> np.ndarray:
    a, w = arm, half_width
    half = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a)]
    return np.array([*half, *[(-x, -y) for x, y in half]])


def _heart(points: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    # the classic curve spans y in [-17, 12]: centre it and fit it in the unit disc
    return np.stack([x, -(y + 2.5)], 1) / 16.5


_ARROW_TOP = [(-0.95, -0.22), (0.15, -0.22), (0.15, -0.62), (0.95, 0.0)]
_ARROW = np.array([*_ARROW_TOP, *[(x, -y) for x, y in reversed(_ARROW_TOP[:-1])]])

# Each shape is a list of (polygon, fill) layers in a unit disc: fill 0 cuts a hole. Holes are
# drawn on the object's own alpha layer, so they show the background, never a flat colour.
_LAYERS: dict[str, list[tuple[np.ndarray, int]]] = {
    "arrow": [(_ARROW, 255)],
    "circle": [(_circle(0.85), 255)],
    "crescent": [(_circle(0.92), 255), (_circle(0.75, cx=0.42), 0)],
    "cross": [(_cross(), 255)],
    "heart": [(_heart(), 255)],
    "hexagon": [(_regular(6, 0.95), 255)],
    "ring": [(_circle(0.92), 255), (_circle(0.55), 0)],
    "square": [(_regular(4, 1.0, phase=np.pi / 4), 255)],
    "star": [(_star(), 255)],
    "triangle": [(_regular(3, 1.0), 255)],
}


def _upsample(values: np.ndarray, size: int) -> np.ndarray:
    """A small ``(k, k, 3)`` array in ``[0, 1]`` resized smoothly to ``(size, size, 3)``."""
    small = Image.fromarray((values * 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour with smooth variations, and stripes or blotches, ``(size, size, 3)``."""
    base = rng.random(3).astype(np.float32)
    cells = int(rng.integers(2, 5))
    field = _upsample(rng.random((cells, cells, 3)), size) - 0.5
    image = base + rng.uniform(0.2, 0.6) * field
    kind = int(rng.integers(3))
    amplitude = rng.uniform(0.03, 0.15)
    tint = rng.uniform(-1.0, 1.0, 3).astype(np.float32)
    if kind == 0:  # stripes of random period and direction
        y, x = _grid(size)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16) * size / 64
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + phase)
        image += amplitude * wave[..., None] * tint
    else:  # blotches a few pixels across
        cells = max(4, size // int(rng.integers(4, 10)))
        image += amplitude * (_upsample(rng.random((cells, cells, 3)), size) - 0.5) * 2 * tint
    return image


def _distractors(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Thin lines, thin arcs, dots and small blobs: premultiplied colour and alpha.

    They are too thin or too small to be mistaken for any of the shapes, whose radius is at
    least 22% of the image, so they are clutter, not evidence. Returns the colour multiplied by
    the coverage ``(size, size, 3)`` and the coverage ``(size, size, 1)``, both in ``[0, 1]``.
    """
    # twice the resolution is enough to smooth thin lines; colour drawn on black and coverage
    # drawn separately and averaged down are exactly the premultiplied layer
    supersample, big = 2, 2 * size
    colours, coverage = Image.new("RGB", (big, big)), Image.new("L", (big, big))
    draws = (ImageDraw.Draw(colours), ImageDraw.Draw(coverage))
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(4))
        x, y = rng.uniform(0, big, 2)
        if kind == 0:
            length, angle = rng.uniform(0.15, 0.5) * big, rng.uniform(0, 2 * np.pi)
            line = [(x, y), (x + length * np.cos(angle), y + length * np.sin(angle))]
            width = int(rng.uniform(1.0, 2.0) * supersample)
            for draw, fill in zip(draws, (colour, 255), strict=True):
                draw.line(line, fill=fill, width=width)
        elif kind == 1:
            r = rng.uniform(0.06, 0.16) * big
            start = rng.uniform(0, 360)
            end, width = start + rng.uniform(40, 160), int(rng.uniform(1.0, 1.6) * supersample)
            for draw, fill in zip(draws, (colour, 255), strict=True):
                draw.arc([x - r, y - r, x + r, y + r], start, end, fill=fill, width=width)
        elif kind == 2:
            r = rng.uniform(0.015, 0.04) * big
            for draw, fill in zip(draws, (colour, 255), strict=True):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            r = rng.uniform(0.03, 0.07) * big
            corners = rng.uniform(-r, r, (int(rng.integers(3, 6)), 2)) + np.array([x, y])
            for draw, fill in zip(draws, (colour, 255), strict=True):
                draw.polygon([tuple(p) for p in corners], fill=fill)
    premultiplied = np.asarray(colours.resize((size, size), Image.BOX), dtype=np.float32) / 255
    alpha = np.asarray(coverage.resize((size, size), Image.BOX), dtype=np.float32) / 255
    return premultiplied, alpha[..., None]


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


# the weights of R, G and B in perceived brightness (ITU-R BT.601)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _render(
    rng: np.random.Generator, shape: str, size: int, with_object: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` in ``[0, 1]`` and the object's alpha ``(size, size)``.

    The random numbers are drawn in the same order with and without the object, so that
    ``with_object=False`` gives exactly the background of the same example.
    """
    supersample = max(2, min(4, 256 // size))
    radius = rng.uniform(0.22, 0.38) * size
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.85, 1.15)
    extent = radius * max(aspect, 1 / aspect) + 1
    centre = rng.uniform(extent, size - extent, 2)
    c, s = np.cos(angle), np.sin(angle)
    affine = radius * np.array([[c, -s], [s, c]]) @ np.diag([aspect, 1 / aspect])

    alpha_big = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(alpha_big)
    for polygon, fill in _LAYERS[shape]:
        points = (polygon @ affine.T + centre) * supersample
        draw.polygon([tuple(p) for p in points], fill=fill)
    alpha = np.asarray(alpha_big.resize((size, size), Image.BOX), dtype=np.float32) / 255

    image = _background(rng, size)
    clutter, coverage = _distractors(rng, size)
    image = image * (1 - coverage) + clutter

    # The colour is drawn independently of the class; it only has to stand out from the
    # background under the object, or the task would be unsolvable for some examples.
    under = image[alpha > 0.5].mean(0)
    candidates = rng.random((16, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - under, axis=1)
    brightness = np.abs((candidates - under) @ _LUMA)
    good = np.flatnonzero((distance >= 0.5) & (brightness >= 0.2))
    colour = candidates[good[0] if len(good) else int((distance + brightness).argmax())]
    # a gentle shading ramp across the object, so that it is not a flat stencil
    y, x = _grid(size)
    direction = rng.uniform(0, 2 * np.pi)
    along = (x - centre[0]) * np.cos(direction) + (y - centre[1]) * np.sin(direction)
    ramp = (1 + rng.uniform(0, 0.25) * along / radius).astype(np.float32)
    if with_object:
        # all in float32: the same background must round to the same 8-bit values
        shaded = np.clip(colour * ramp[..., None], 0, 1)
        image = image * (1 - alpha[..., None]) + shaded * alpha[..., None]
    noise = rng.uniform(0.01, 0.05) * rng.standard_normal((size, size, 3), dtype=np.float32)
    image = np.clip(image + noise, 0, 1)
    # exactly representable in 8 bits, so writing PNGs and reading them back is lossless
    return np.round(image * 255) / 255, alpha


class SyntheticShapes(Dataset):
    """Shapes of random colour, size, position and rotation on cluttered backgrounds.

    The classes are the names in ``classes`` (by default all of :data:`SHAPES`); colour,
    size, position, rotation, background and clutter are drawn independently of the class.
    Example ``index`` has label ``index % len(classes)`` (so every class is equally frequent)
    and is rendered from ``numpy.random.default_rng([seed, split, index])``: the same image
    every time and in every process, and the splits never share a random stream.

    Items are ``(image, label)``, or ``(image, label, mask)`` with ``return_mask=True``:
    ``image`` float ``(3, H, W)`` in ``[0, 1]`` (multiples of 1/255), ``label`` an int,
    ``mask`` bool ``(H, W)``, true where the object covers at least half of the pixel.
    ``transform``, if given, is applied to the image (and to the mask with it, as a
    :class:`torchvision.tv_tensors.Mask`, so torchvision v2 transforms move both together).
    With ``cache=True`` every example is kept in memory once rendered (8 bits a channel, which
    is lossless here): rendering costs about 2 ms an image at 64 x 64, more than a small
    model's training step spends on it, and every epoch reads every example again. Each
    ``DataLoader`` worker process keeps a cache of its own.

    Example:
        >>> data = SyntheticShapes(20, image_size=64, seed=0, return_mask=True)
        >>> image, label, mask = data[3]
        >>> image.shape, data.classes[label], mask.dtype, bool(mask.any())
        (torch.Size([3, 64, 64]), 'cross', torch.bool, True)
    """

    def __init__(
        self,
        num_examples: int = 10_000,
        image_size: int = 64,
        *,
        seed: int = 0,
        split: str = "train",
        return_mask: bool = False,
        classes: Sequence[str] | None = None,
        transform: Callable[..., Any] | None = None,
        cache: bool = False,
    ) -> None:
        if num_examples < 0:
            raise DataError(f"num_examples must be >= 0, got {num_examples}")
        if image_size < 16:
            raise DataError(f"image_size must be at least 16 pixels, got {image_size}")
        if seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed}")
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        names = SHAPES if classes is None else tuple(sorted(set(classes)))
        unknown = [name for name in names if name not in SHAPES]
        if unknown or len(names) < 2:
            raise DataError(
                f"classes must be at least two of {', '.join(SHAPES)}; got {list(classes or [])}"
            )
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.split = split
        self.return_mask = return_mask
        self.classes: tuple[str, ...] = names
        self.transform = transform
        self._cache: dict[int, tuple[Tensor, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_examples

    @property
    def targets(self) -> list[int]:
        """The label of every example, without rendering any."""
        return [i % len(self.classes) for i in range(self.num_examples)]

    def _key(self, index: int) -> int:
        """The example's position in ``[0, num_examples)`` (negative indices count from the end)."""
        if not -self.num_examples <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        return index % self.num_examples

    def _rng(self, key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), key])

    def example(self, index: int) -> tuple[Tensor, int, Tensor]:
        """Example ``index`` as ``(image, label, mask)``, untransformed, whatever ``return_mask``.

        Example:
            >>> image, label, mask = SyntheticShapes(5).example(0)
            >>> image.shape, label, mask.shape
            (torch.Size([3, 64, 64]), 0, torch.Size([64, 64]))
        """
        key = self._key(index)
        label = key % len(self.classes)
        if self._cache is not None and key in self._cache:
            pixels, mask = self._cache[key]
            return pixels.float() / 255, label, mask.clone()
        image, alpha = _render(self._rng(key), self.classes[label], self.image_size)
        tensor, mask = _to_tensor(image), torch.from_numpy(alpha >= 0.5)
        if self._cache is not None:
            self._cache[key] = ((tensor * 255).round().to(torch.uint8), mask.clone())
        return tensor, label, mask

    def background(self, index: int) -> Tensor:
        """Example ``index`` rendered without its object: the same background and clutter.

        Useful to check that explanations (or masks) point at the object and not the clutter.

        Example:
            >>> data = SyntheticShapes(5)
            >>> image, _, mask = data.example(1)
            >>> changed = (image != data.background(1)).any(0)
            >>> bool(changed[mask].all()), int(changed.sum()) < 1.5 * int(mask.sum())
            (True, True)
        """
        key = self._key(index)
        shape = self.classes[key % len(self.classes)]
        image, _ = _render(self._rng(key), shape, self.image_size, with_object=False)
        return _to_tensor(image)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image, label, mask = self.example(index)
        if self.transform is not None:
            if self.return_mask:
                from torchvision import tv_tensors

                image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
                mask = mask.as_subclass(Tensor)
            else:
                image = self.transform(image)
            image = image.as_subclass(Tensor) if isinstance(image, Tensor) else image
        return (image, label, mask) if self.return_mask else (image, label)

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(num_examples={self.num_examples}, image_size={self.image_size}, "
            f"seed={self.seed}, split={self.split!r}, classes={len(self.classes)})"
        )


def _to_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def write_image_folder(dataset: Dataset, root: str | Path) -> Path:
    """Write a labelled dataset as PNG image folders, one subfolder per class; return ``root``.

    Images go to ``root/<class>/<index>.png``. Masks, when the dataset has them, go to the
    sibling folder ``<root>_masks/<class>/<index>.png`` (8-bit, 255 on the object), which image
    folder loaders ignore; :class:`~bcosify.data.ImageFolderDataset` reads them with
    ``return_mask=True``. A :class:`SyntheticShapes` dataset is written untransformed and always
    with its masks; any other dataset needs a ``classes`` attribute and items
    ``(image, label)`` or ``(image, label, mask)`` with images float ``(3, H, W)`` in ``[0, 1]``.
    Write the splits to ``<dir>/train`` and ``<dir>/val`` to get the layout that
    ``ImageFolderDataset(<dir>, split=...)`` reads.

    Example:
        >>> import tempfile
        >>> root = write_image_folder(SyntheticShapes(20), Path(tempfile.mkdtemp()) / "shapes")
        >>> sorted(p.name for p in (root / "star").iterdir())
        ['000008.png', '000018.png']
        >>> (root.parent / "shapes_masks" / "star" / "000008.png").is_file()
        True
    """
    root = Path(root)
    classes = list(getattr(dataset, "classes", None) or [])
    if not classes:
        raise DataError(
            f"cannot write {type(dataset).__name__} as an image folder: it has no `classes` "
            "attribute naming the class of each label"
        )
    if classes != sorted(classes):
        raise DataError(
            f"the class names {classes} are not in sorted order; folder loaders number class "
            "folders in sorted order, so the labels would change on reading. Rename the classes "
            "so that sorting keeps their order (for example with a '00_' prefix)."
        )
    masks_root = mask_folder_for(root)
    for folder in (root, masks_root):
        if folder.exists() and any(folder.iterdir()):
            raise DataError(f"{folder} is not empty; write the image folder to a new folder")
    width = max(6, len(str(max(len(dataset) - 1, 0))))  # type: ignore[arg-type]
    for index in range(len(dataset)):  # type: ignore[arg-type]
        if isinstance(dataset, SyntheticShapes):
            image, label, mask = dataset.example(index)
        else:
            item = dataset[index]
            image, label = item[0], int(item[1])
            mask = item[2] if len(item) > 2 else None
        name = f"{index:0{width}d}.png"
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        # compress_level=1: several times faster to write, and still lossless
        Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).save(folder / name, compress_level=1)
        if mask is not None:
            (masks_root / classes[label]).mkdir(parents=True, exist_ok=True)
            mask_pixels = mask.detach().reshape(image.shape[-2:]).cpu().numpy().astype(bool)
            Image.fromarray(mask_pixels.astype(np.uint8) * 255).save(
                masks_root / classes[label] / name, compress_level=1
            )
    return root
