"""One entry point for every dataset bcosify knows: the built-in shapes or an image folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from .folder import ImageFolderDataset
from .synthetic import SPLITS, SyntheticShapes

__all__ = ["DEFAULT_SYNTHETIC_SIZES", "build_dataset"]

# Enough for a small CNN to learn the shapes in a few epochs, and quick to render (~1 ms each).
DEFAULT_SYNTHETIC_SIZES = {"train": 10_000, "val": 2_000, "test": 2_000}


def build_dataset(
    name_or_path: str | Path,
    split: str = "train",
    image_size: int = 64,
    *,
    num_examples: int | None = None,
    seed: int = 0,
    return_mask: bool = False,
    skip_corrupt: bool = False,
    augment: bool = True,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """The dataset ``"synthetic"`` (:class:`SyntheticShapes`) or the image folder at a path.

    For ``"synthetic"``, images are rendered at ``image_size`` and ``num_examples`` defaults to
    :data:`DEFAULT_SYNTHETIC_SIZES` of the split. For a folder (:class:`ImageFolderDataset`),
    the train split gets the random training transform (unless ``augment`` is False) and the
    other splits the evaluation transform, at ``image_size``; ``num_examples`` and ``seed`` do not
    apply, and ``classes`` fixes the class list (see :class:`ImageFolderDataset`; for the
    synthetic shapes, which of :data:`~bcosify.data.ALL_SHAPES` are the classes). The synthetic
    shapes are never augmented: every example is already a fresh random scene.

    Example:
        >>> data = build_dataset("synthetic", "val", 32, num_examples=8)
        >>> len(data), data[0][0].shape
        (8, torch.Size([3, 32, 32]))
    """
    if str(name_or_path) == "synthetic":
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return SyntheticShapes(
            DEFAULT_SYNTHETIC_SIZES[split] if num_examples is None else num_examples,
            image_size,
            seed=seed,
            split=split,
            return_mask=return_mask,
            classes=classes,
        )
    path = Path(name_or_path)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        raise DataError(
            f"unknown dataset {str(name_or_path)!r}: not 'synthetic' and not an existing folder "
            f"{path.resolve()}. Pass 'synthetic' or the path of an image folder."
        )
    return ImageFolderDataset(
        path,
        split,
        image_size=image_size,
        transform="auto" if augment else "eval",
        skip_corrupt=skip_corrupt,
        return_mask=return_mask,
        classes=classes,
    )
