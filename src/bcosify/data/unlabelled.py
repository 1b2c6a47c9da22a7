"""Any folder of images, without labels: the data of a distillation (RECIPE 8)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError
from .folder import IMAGE_EXTENSIONS, eval_transform, list_images, read_image, train_transform

__all__ = ["UnlabelledImages", "held_out_split"]


class UnlabelledImages(Dataset):
    """Every image under a folder (subfolders included, in sorted order), with label 0.

    Distilling an image tower needs images only: class folders, captions and labels are not
    used, so any folder of images will do (ImageNet's train folder, a CC3M dump, photos).
    Items are ``(image, 0)`` with ``image`` float ``(3, size, size)`` in ``[0, 1]``: the standard
    training transform (random resized crop and flip) with ``train=True``, else resize and
    centre crop.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "a").mkdir()
        >>> Image.new("RGB", (40, 30)).save(root / "a" / "x.png")
        >>> Image.new("RGB", (20, 20)).save(root / "y.jpg")
        >>> data = UnlabelledImages(root, image_size=16)
        >>> len(data), data[0][0].shape, data[0][1]
        (2, torch.Size([3, 16, 16]), 0)
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 224,
        *,
        train: bool = True,
        files: Sequence[Path] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder; pass a folder of images")
        if files is not None:
            self.files = list(files)
        else:
            listing = list_images(self.root)
            if listing.skipped:
                warnings.warn(f"{self.root}: {listing.note()}", stacklevel=2)
            self.files = listing.images
        if not self.files:
            raise DataError(
                f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), in any subfolder"
            )
        self.transform = (train_transform if train else eval_transform)(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(read_image(self.files[index])), 0

    def __repr__(self) -> str:
        return f"UnlabelledImages({str(self.root)!r}, {len(self)} images)"


def held_out_split(
    root: str | Path, image_size: int, *, share: float = 0.1, seed: int = 0, train: bool = True
) -> tuple[UnlabelledImages, UnlabelledImages]:
    """The images of a folder split by image into a training part (with the training
    transform when ``train``) and a held-out part (resize and centre crop) of about ``share``
    of them, at least one, drawn with ``seed``; a folder of one image cannot be split.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for i in range(20):
        ...     Image.new("RGB", (24, 24)).save(root / f"{i}.png")
        >>> fit, held_out = held_out_split(root, 16)
        >>> len(fit), len(held_out), set(fit.files) & set(held_out.files)
        (18, 2, set())
    """
    files = UnlabelledImages(root, image_size).files
    if len(files) < 2:
        raise DataError(
            f"{root} holds {len(files)} image: a run needs at least two (one to train on, one "
            "held out to measure it)"
        )
    order = list(files)
    random.Random(seed).shuffle(order)
    count = min(len(files) - 1, max(1, round(share * len(files))))
    held = sorted(order[:count])
    kept = sorted(order[count:])
    return (
        UnlabelledImages(root, image_size, train=train, files=kept),
        UnlabelledImages(root, image_size, train=False, files=held),
    )
