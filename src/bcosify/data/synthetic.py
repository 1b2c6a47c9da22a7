"""A built-in synthetic dataset: shapes of random colour, size, position and rotation.

Each example is rendered on the fly from ``(seed, split, index)``, so it is the same image in every
process (DataLoader workers included) and no data is ever stored or downloaded. Every example has
the segmentation mask of its object, which is what localisation metrics of explanations need.

By default the classes are the ten :data:`SHAPES`; a harder task takes more classes (from
:data:`EXTRA_SHAPES` too), distractor objects (smaller shapes of no class) and textured objects.
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

__all__ = [
    "ALL_SHAPES",
    "EXTRA_SHAPES",
    "SHAPES",
    "SPLITS",
    "SyntheticShapes",
    "write_image_folder",
]

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
# More shapes for harder tasks, as classes or as distractor objects; not among the default classes.
EXTRA_SHAPES: tuple[str, ...] = (
    "bowtie",
    "diamond",
    "drop",
    "ell",
    "ellipse",
    "frame",
    "pacman",
    "semicircle",
    "tee",
    "trapezoid",
)
ALL_SHAPES: tuple[str, ...] = tuple(sorted(SHAPES + EXTRA_SHAPES))
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


def _mirrored(top: list[tuple[float, float]]) -> np.ndarray:
    """A polygon symmetric about the x axis from its upper half, listed from left to right."""
    return np.array([*top, *[(x, -y) for x, y in reversed(top) if y != 0]])


def _drop(points: int = 48) -> np.ndarray:
    """A teardrop: a half circle with a pointed tip, centred in the unit disc."""
    t = np.linspace(-np.pi / 2, np.pi / 2, points)
    arc = np.stack([-0.3 - 0.6 * np.cos(t), 0.6 * np.sin(t)], 1)
    return np.array([*arc, (0.95, 0.0)])


_ARROW = _mirrored([(-0.95, -0.22), (0.15, -0.22), (0.15, -0.62), (0.95, 0.0)])
_SQUARE = _regular(4, 1.0, phase=np.pi / 4)

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
    "square": [(_SQUARE, 255)],
    "star": [(_star(), 255)],
    "triangle": [(_regular(3, 1.0), 255)],
    # EXTRA_SHAPES
    "bowtie": [
        (
            np.array([(-0.9, -0.7), (0.0, -0.1), (0.9, -0.7), (0.9, 0.7), (0.0, 0.1), (-0.9, 0.7)]),
            255,
        )
    ],
    "diamond": [(np.array([(0.0, -1.0), (0.55, 0.0), (0.0, 1.0), (-0.55, 0.0)]), 255)],
    "drop": [(_drop(), 255)],
    "ell": [
        (
            np.array(
                [(-0.7, -0.9), (-0.2, -0.9), (-0.2, 0.35), (0.7, 0.35), (0.7, 0.85), (-0.7, 0.85)]
            ),
            255,
        )
    ],
    "ellipse": [(_circle(0.95) * np.array([1.0, 0.5]), 255)],
    "frame": [(_SQUARE * 0.9, 255), (_SQUARE * 0.5, 0)],
    "semicircle": [(_circle(0.95)[:25] - np.array([0.0, 0.45]), 255)],
    "tee": [
        (
            np.array(
                [
                    (-0.9, -0.85),
                    (0.9, -0.85),
                    (0.9, -0.4),
                    (0.22, -0.4),
                    (0.22, 0.9),
                    (-0.22, 0.9),
                    (-0.22, -0.4),
                    (-0.9, -0.4),
                ]
            ),
            255,
        )
    ],
    "trapezoid": [(np.array([(-0.95, 0.55), (0.95, 0.55), (0.45, -0.55), (-0.45, -0.55)]), 255)],
    "pacman": [(np.array([(0.0, 0.0), *_circle(0.9, points=48)[4:45]]), 255)],
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


def _clutter(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
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


def _shape_alpha(
    shape: str, size: int, radius: float, angle: float, aspect: float, centre: np.ndarray
) -> np.ndarray:
    """The coverage ``(size, size)`` of ``shape`` drawn at ``centre``, anti-aliased."""
    supersample = max(2, min(4, 256 // size))
    c, s = np.cos(angle), np.sin(angle)
    affine = radius * np.array([[c, -s], [s, c]]) @ np.diag([aspect, 1 / aspect])
    alpha_big = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(alpha_big)
    for polygon, fill in _LAYERS[shape]:
        points = (polygon @ affine.T + centre) * supersample
        draw.polygon([tuple(p) for p in points], fill=fill)
    return np.asarray(alpha_big.resize((size, size), Image.BOX), dtype=np.float32) / 255


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the mean colour ``under`` it (16 tries)."""
    candidates = rng.random((16, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - under, axis=1)
    brightness = np.abs((candidates - under) @ _LUMA)
    good = np.flatnonzero((distance >= 0.5) & (brightness >= 0.2))
    return candidates[good[0] if len(good) else int((distance + brightness).argmax())]


def _texture(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A pattern ``(size, size)`` in ``[0, 1]``: stripes or checks a fraction of ``radius`` wide."""
    y, x = _grid(size)
    angle, period = rng.uniform(0, np.pi), rng.uniform(0.35, 0.7) * radius
    u = x * np.cos(angle) + y * np.sin(angle)
    if rng.random() < 0.5:  # stripes
        return (0.5 + 0.5 * np.sin(2 * np.pi * u / period)).astype(np.float32)
    v = -x * np.sin(angle) + y * np.cos(angle)  # checks
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def _fill(
    rng: np.random.Generator,
    image: np.ndarray,
    alpha: np.ndarray,
    extra: np.random.Generator | None,
    radius: float,
) -> np.ndarray:
    """The object's colour per pixel ``(size, size, 3)``: plain, or textured with ``extra``."""
    colour = _contrasting(rng, image[alpha > 0.5].mean(0))
    if extra is None:
        return np.broadcast_to(colour, image.shape)
    # a second colour in a pattern, never more than 60%, so that the first one still stands out
    second, share = extra.random(3).astype(np.float32), extra.uniform(0.35, 0.6)
    pattern = share * _texture(extra, image.shape[0], radius)[..., None]
    return colour * (1 - pattern) + second * pattern


def _decoys(
    rng: np.random.Generator,
    image: np.ndarray,
    shapes: Sequence[str],
    count: int,
    avoid: tuple[np.ndarray, float],
    textured: bool,
) -> np.ndarray:
    """``image`` with ``count`` smaller shapes of ``shapes`` drawn on it, away from ``avoid``.

    Distractor objects are solid shapes like the object but of no class, with at most 60% of the
    smallest object's radius: a classifier has to find the object, not just any shape.
    """
    size = image.shape[0]
    centre, radius = avoid
    for _ in range(count):
        shape = shapes[int(rng.integers(len(shapes)))]
        r = rng.uniform(0.09, 0.13) * size
        angle, aspect = rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15)
        extent = r * max(aspect, 1 / aspect) + 1
        # the first of a few random places that does not overlap the object much, else the
        # farthest of them
        places = rng.uniform(extent, size - extent, (8, 2))
        distance = np.linalg.norm(places - centre, axis=1)
        clear = np.flatnonzero(distance >= 0.8 * (radius + r))
        place = places[clear[0] if len(clear) else int(distance.argmax())]
        alpha = _shape_alpha(shape, size, r, angle, aspect, place)
        fill = _fill(rng, image, alpha, rng if textured else None, r)
        image = image * (1 - alpha[..., None]) + fill * alpha[..., None]
    return image


def _render(
    rng: np.random.Generator,
    shape: str,
    size: int,
    with_object: bool = True,
    *,
    extra: np.random.Generator | None = None,
    decoys: Sequence[str] = (),
    distractors: int = 0,
    textured: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` in ``[0, 1]`` and the object's alpha ``(size, size)``.

    The random numbers are drawn in the same order with and without the object, so that
    ``with_object=False`` gives exactly the background of the same example. Distractor objects
    (``distractors`` of the ``decoys`` shapes) and textures draw from ``extra``, a stream of
    their own, so that an example without them is the image it always was.
    """
    radius = rng.uniform(0.22, 0.38) * size
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.85, 1.15)
    extent = radius * max(aspect, 1 / aspect) + 1
    centre = rng.uniform(extent, size - extent, 2)
    alpha = _shape_alpha(shape, size, radius, angle, aspect, centre)

    image = _background(rng, size)
    clutter, coverage = _clutter(rng, size)
    image = image * (1 - coverage) + clutter
    if distractors and extra is not None:
        image = _decoys(extra, image, decoys, distractors, (centre, radius), textured)

    # The colour is drawn independently of the class; it only has to stand out from the
    # background under the object, or the task would be unsolvable for some examples.
    fill = _fill(rng, image, alpha, extra if textured else None, radius)
    # a gentle shading ramp across the object, so that it is not a flat stencil
    y, x = _grid(size)
    direction = rng.uniform(0, 2 * np.pi)
    along = (x - centre[0]) * np.cos(direction) + (y - centre[1]) * np.sin(direction)
    ramp = (1 + rng.uniform(0, 0.25) * along / radius).astype(np.float32)
    if with_object:
        # all in float32: the same background must round to the same 8-bit values
        shaded = np.clip(fill * ramp[..., None], 0, 1)
        image = image * (1 - alpha[..., None]) + shaded * alpha[..., None]
    noise = rng.uniform(0.01, 0.05) * rng.standard_normal((size, size, 3), dtype=np.float32)
    image = np.clip(image + noise, 0, 1)
    # exactly representable in 8 bits, so writing PNGs and reading them back is lossless
    return np.round(image * 255) / 255, alpha


class SyntheticShapes(Dataset):
    """Shapes of random colour, size, position and rotation on cluttered backgrounds.

    The classes are the names in ``classes`` (by default the ten :data:`SHAPES`; any of
    :data:`ALL_SHAPES`); colour, size, position, rotation, background and clutter are drawn
    independently of the class. Example ``index`` has label ``index % len(classes)`` (so every
    class is equally frequent) and is rendered from ``numpy.random.default_rng([seed, split,
    index])``: the same image every time and in every process, and the splits never share a
    random stream.

    Harder tasks: ``distractors`` adds that many distractor objects to every image, smaller
    solid shapes of no class (drawn from ``distractor_shapes``, by default every shape of
    :data:`ALL_SHAPES` that is not a class), under the object and outside its mask;
    ``textured=True`` fills the object (and the distractors) with stripes or checks of a
    second colour. Both draw from a random stream of their own, so the images without them
    stay what they were.

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
        >>> hard = SyntheticShapes(20, classes=ALL_SHAPES[:16], distractors=2, textured=True)
        >>> len(hard.classes), hard.distractor_shapes
        (16, ('star', 'tee', 'trapezoid', 'triangle'))
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
        distractors: int = 0,
        distractor_shapes: Sequence[str] | None = None,
        textured: bool = False,
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
        unknown = [name for name in names if name not in ALL_SHAPES]
        if unknown or len(names) < 2:
            raise DataError(
                f"classes must be at least two of {', '.join(ALL_SHAPES)}; got "
                f"{list(classes or [])}"
            )
        if isinstance(distractors, bool) or not isinstance(distractors, int) or distractors < 0:
            raise DataError(f"distractors is a number of objects >= 0, got {distractors!r}")
        decoys = tuple(
            sorted(set(ALL_SHAPES) - set(names) if distractor_shapes is None else distractor_shapes)
        )
        wrong = [name for name in decoys if name not in ALL_SHAPES or name in names]
        if distractors and (wrong or not decoys):
            raise DataError(
                "distractor_shapes must be shapes of ALL_SHAPES that are not classes (a "
                f"distractor of a class would make the label ambiguous); got {list(decoys)}"
                + (f", of which {wrong} are not" if wrong else "")
                + ". Use fewer classes or name other distractor shapes."
            )
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.split = split
        self.return_mask = return_mask
        self.classes: tuple[str, ...] = names
        self.distractors = distractors
        self.distractor_shapes: tuple[str, ...] = decoys if distractors else ()
        self.textured = bool(textured)
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

    def _render(self, key: int, with_object: bool = True) -> tuple[np.ndarray, np.ndarray]:
        harder = self.distractors > 0 or self.textured
        return _render(
            self._rng(key),
            self.classes[key % len(self.classes)],
            self.image_size,
            with_object,
            # the harder task's stream, one more entry in the key than the example's own
            extra=np.random.default_rng([self.seed, SPLITS.index(self.split), key, 1])
            if harder
            else None,
            decoys=self.distractor_shapes,
            distractors=self.distractors,
            textured=self.textured,
        )

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
        image, alpha = self._render(key)
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
        image, _ = self._render(self._key(index), with_object=False)
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
            f"seed={self.seed}, split={self.split!r}, classes={len(self.classes)}"
            + (f", distractors={self.distractors}" if self.distractors else "")
            + (", textured=True" if self.textured else "")
            + ")"
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
