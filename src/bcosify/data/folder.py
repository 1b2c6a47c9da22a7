"""Image folders: one subfolder per class, optionally under ``train/`` and ``val/``.

Images are read with Pillow, converted to RGB and returned as float tensors ``(3, H, W)`` in
``[0, 1]``, with no mean/std normalisation: bcosify models encode their input themselves.
Folders are listed when the dataset is built (so a bad layout fails at once); images are decoded
when they are loaded, and an unreadable one raises a :class:`~bcosify.errors.DataError` naming
the file, or is skipped and counted with ``skip_corrupt=True``.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import DataError
from .classes import check_classes

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageListing",
    "eval_transform",
    "list_images",
    "mask_folder_for",
    "read_image",
    "train_transform",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".jpeg",
    ".jpg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)

# What Pillow raises for broken files varies with the format and the kind of damage.
_READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

# how to get past unreadable files, in the library and on the command line
_SKIP_ADVICE = "pass skip_corrupt=True (--skip-corrupt on the command line) to skip them"

_LAYOUT = (
    "expected root/<class>/<image> (one subfolder per class), or root/train/<class>/<image> "
    "and root/val/<class>/<image>"
)


def train_transform(size: int) -> v2.Compose:
    """The standard training transform: ``RandomResizedCrop(size)`` and a horizontal flip.

    Accepts PIL images and uint8 or float tensors ``(3, H, W)``; returns float ``(3, size,
    size)`` in ``[0, 1]``. A :class:`torchvision.tv_tensors.Mask` passed along is cropped and
    flipped with the image.

    Example:
        >>> image = train_transform(32)(torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8))
        >>> image.shape, image.dtype, bool(0 <= image.min() and image.max() <= 1)
        (torch.Size([3, 32, 32]), torch.float32, True)
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    """The standard evaluation transform: ``Resize(round(size / 0.875))`` and ``CenterCrop(size)``.

    The shorter side is resized to ``size / 0.875`` (256 for 224) and the centre cropped.
    Accepts and returns the same types as :func:`train_transform`.

    Example:
        >>> eval_transform(224)(torch.rand(3, 300, 400)).shape
        torch.Size([3, 224, 224])
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(size / 0.875), antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def mask_folder_for(images_root: str | Path) -> Path:
    """Where the masks of an image folder live: the sibling folder ``<images_root>_masks``.

    Example:
        >>> mask_folder_for("shapes/train").as_posix()
        'shapes/train_masks'
    """
    root = Path(images_root)
    return root.with_name(root.name + "_masks")


def read_image(path: str | Path) -> Tensor:
    """Decode an image file as uint8 RGB ``(3, H, W)``; a :class:`DataError` names a bad file.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "grey.png"
        >>> Image.new("L", (5, 4), 128).save(path)
        >>> read_image(path).shape
        torch.Size([3, 4, 5])
    """
    return torch.from_numpy(_decode(Path(path), "RGB")).permute(2, 0, 1)


def _decode(path: Path, mode: str) -> np.ndarray:
    _check_regular(path)
    try:
        with Image.open(path) as image:
            # the orientation a camera recorded: phone photos are stored sideways
            upright = ImageOps.exif_transpose(image)
            # convert() decodes the whole file, so truncated data fails here and not later
            pixels = np.array(_to_8_bit(upright).convert(mode))
    except (FileNotFoundError, *_READ_ERRORS) as error:
        raise _unreadable(path, error) from error
    return pixels


def _check_regular(path: Path) -> None:
    """A regular file (or a link to one): opening a FIFO would block, a device never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as error:
        raise _unreadable(path, error) from error
    except OSError as error:
        raise DataError(f"cannot read image file {path}: {error.strerror}") from error
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{path} is not a regular file (a folder, pipe, socket or device): bcosify reads "
            "images from regular files only"
        )


def _check_file(path: Path) -> None:
    """Read ``path``'s header and, for PNG, check every chunk's checksum, without decoding the
    pixels: a fraction of the cost of :func:`_decode`, and it finds files that are not images,
    empty or broken headers and damaged PNGs (a JPEG truncated after its header only shows
    when decoded)."""
    _check_regular(path)
    try:
        with Image.open(path) as image:
            image.verify()
    except (FileNotFoundError, *_READ_ERRORS) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: BaseException) -> DataError:
    if isinstance(error, FileNotFoundError):
        return DataError(f"image file {path} does not exist (was it moved or deleted?)")
    return DataError(f"cannot read image file {path}: {type(error).__name__}: {error}")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (modes ``I;16*``, and ``I``, which Pillow uses for 16-bit PNGs) scaled
    to 8 bits; Pillow's own ``convert`` clips it at 255 instead, turning most pixels white.
    Floating-point greyscale (mode ``F``, from TIFF) in ``[0, 1]`` is scaled by 255 (Pillow
    would truncate it to zeros), other floating-point values are taken as 0-255. Other modes
    (16-bit RGB included, which Pillow reads as 8-bit) are returned as they are."""
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
    elif image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64) / 257.0
    else:
        return image
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))


@dataclass
class ImageListing:
    """The image files of a folder, and what was passed over.

    Attributes:
        images: the image files (regular files, or links to them), sorted.
        others: regular files without an image extension.
        skipped: entries with an image extension that are not regular files (pipes, sockets,
            devices, broken links) and folders reached a second time through a link (a loop).
    """

    images: list[Path] = field(default_factory=list)
    others: int = 0
    skipped: list[Path] = field(default_factory=list)

    def note(self) -> str:
        """A sentence about the skipped entries, or ``""``."""
        if not self.skipped:
            return ""
        shown = ", ".join(str(p) for p in self.skipped[:3])
        more = ", ..." if len(self.skipped) > 3 else ""
        return (
            f"{len(self.skipped)} entries skipped (not regular files, or folders reached again "
            f"through a link): {shown}{more}"
        )


def list_images(folder: str | Path, recursive: bool = True) -> ImageListing:
    """The image files in ``folder`` (and, with ``recursive``, its sub-folders), sorted.

    Links are followed, each folder once: a link back to a folder already listed or to the
    folder itself or one above it (``self -> .``, ``up -> ..``) is skipped, so a loop neither
    hangs the listing nor counts an image twice (or under another class). Only regular files
    are listed: a pipe named ``x.png`` (which would block a reader)
    or a broken link is skipped. Hidden entries are ignored. What was skipped is counted in
    :attr:`ImageListing.skipped`.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4)).save(root / "a.png")
        >>> (root / "loop").symlink_to(root)
        >>> os.mkfifo(root / "pipe.png")
        >>> listing = list_images(root)
        >>> [p.name for p in listing.images], [p.name for p in listing.skipped]
        (['a.png'], ['loop', 'pipe.png'])
    """
    listing = ImageListing()
    root = Path(folder)
    try:  # the folder and every folder above it: a link to one of them is a loop
        above = {root.resolve(), *root.resolve().parents}
    except OSError:
        above = set()
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            info = directory.stat()
            loop = directory != root and directory.resolve() in above
        except OSError:
            listing.skipped.append(directory)
            continue
        if loop or (info.st_dev, info.st_ino) in seen:
            listing.skipped.append(directory)
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            listing.skipped.append(directory)
            continue
        folders = []
        for entry in entries:
            if not _visible(entry.name):
                continue
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode  # follows links: what a reader would open
            except OSError:
                mode = None
            if mode is not None and stat.S_ISDIR(mode):
                folders.append(path)
            elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                listing.others += mode is not None and stat.S_ISREG(mode)
            elif mode is not None and stat.S_ISREG(mode):
                listing.images.append(path)
            else:
                listing.skipped.append(path)
        if recursive:
            pending += reversed(folders)
    listing.images.sort()
    listing.skipped.sort()
    return listing


def _resolve_root(root: Path, split: str | None) -> Path:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; {_LAYOUT}")
    if split is None:
        return root
    if (root / split).is_dir():
        return root / split
    present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if present:
        raise DataError(
            f"image folder {root} has no {split!r} split: found {', '.join(present)}. "
            f"Create {root / split} or choose one of those splits."
        )
    return root  # a single root serves every split; only the transform differs


class ImageFolderDataset(Dataset):
    """Images in class-per-subfolder folders, as float tensors ``(3, H, W)`` in ``[0, 1]``.

    ``root`` holds one subfolder per class (named after the class; labels follow the sorted
    names, as in torchvision's ``ImageFolder``), or ``train/``, ``val/`` (and ``test/``)
    subfolders that each hold class subfolders; ``split`` picks one of them. A root without
    split subfolders is used as it is for every split. Hidden files and files without an image
    extension (``IMAGE_EXTENSIONS``) are ignored; images in nested folders within a class folder
    count for that class.

    ``transform`` is ``"train"`` (:func:`train_transform`), ``"eval"`` (:func:`eval_transform`),
    both at ``image_size``; ``"auto"`` (the default: ``"train"`` for the train split,
    ``"eval"`` otherwise); ``None`` (the image as it is); or any callable on a uint8
    :class:`torchvision.tv_tensors.Image` (and mask, with ``return_mask=True``) that returns
    float images in ``[0, 1]``.

    With ``return_mask=True`` items are ``(image, label, mask)``: the mask of
    ``<root>/<class>/<name>.<ext>`` is ``<root>_masks/<class>/<name>.png`` (see
    :func:`mask_folder_for`; ``masks_root`` overrides it), bool ``(H, W)``, transformed with the
    image. :func:`~bcosify.data.write_image_folder` writes this layout.

    ``classes`` fixes the class list instead of the folder's (a model's class names, say):
    labels are indices into it, the folder may hold a subset of its classes, and a class folder
    not in it is a :class:`DataError` naming both lists.

    An unreadable image raises a :class:`DataError` naming the file when it is loaded (in a
    DataLoader worker too). With ``skip_corrupt=True`` it is skipped instead: the next readable
    image takes its place and the file is counted in :attr:`skipped`, across DataLoader
    workers. :meth:`validate` checks every file up front (``validate=True`` here), and
    :meth:`validate` with ``decode=False`` quickly checks every header.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("cat", "dog"):
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (40, 30), "white").save(root / name / "1.png")
        >>> data = ImageFolderDataset(root, image_size=16, transform="eval")
        >>> image, label = data[1]
        >>> data.classes, image.shape, label, float(image.max())
        (['cat', 'dog'], torch.Size([3, 16, 16]), 1, 1.0)
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        image_size: int = 224,
        transform: str | Callable[..., Any] | None = "auto",
        skip_corrupt: bool = False,
        return_mask: bool = False,
        masks_root: str | Path | None = None,
        validate: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = _resolve_root(Path(root), split)
        self.split = split
        self.skip_corrupt = skip_corrupt
        self.return_mask = return_mask
        self.transform = self._make_transform(transform, split, image_size)

        folders = _class_folders(self.root)
        if not folders:
            images = list_images(self.root).images
            found = f"; it holds {len(images)} images directly" if images else ""
            raise DataError(
                f"image folder {self.root} has no class subfolders{found}. Put the images of "
                f"each class in a subfolder named after the class: {_LAYOUT}"
            )
        if classes is not None:
            check_classes(
                list(classes), folders, "the class list given", f"image folder {self.root}",
                subset=True,
            )  # fmt: skip
        self.classes: list[str] = folders if classes is None else list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        # entries that are not regular image files, or folders reached again through a link
        self.passed_over: list[Path] = []
        for name in folders:
            label = self.class_to_idx[name]
            listing = list_images(self.root / name)
            images, others = listing.images, listing.others
            self.passed_over += listing.skipped
            if not images:
                found = f" (only {others} files without an image extension)" if others else ""
                raise DataError(
                    f"class folder {self.root / name} holds no images{found}. Add images with "
                    f"one of the extensions {', '.join(IMAGE_EXTENSIONS)}, or remove the folder."
                )
            self.samples += [(path, label) for path in images]
        if self.passed_over:
            warnings.warn(
                f"{self.root}: {ImageListing(skipped=self.passed_over).note()}", stacklevel=2
            )

        self.masks_root: Path | None = None
        if return_mask:
            self.masks_root = Path(masks_root) if masks_root else mask_folder_for(self.root)
            if not self.masks_root.is_dir():
                raise DataError(
                    f"no mask folder {self.masks_root} for the images in {self.root}: masks "
                    "must mirror the images, <masks_root>/<class>/<name>.png. Pass masks_root, "
                    "or return_mask=False."
                )
        self._dropped: list[Path] = []
        # In shared memory, so that images skipped in DataLoader workers are counted here too.
        self._corrupt = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        if validate:
            self.validate()

    @staticmethod
    def _make_transform(
        transform: str | Callable[..., Any] | None, split: str | None, image_size: int
    ) -> Callable[..., Any] | None:
        if transform == "auto":
            transform = "train" if split == "train" else "eval"
        if transform == "train":
            return train_transform(image_size)
        if transform == "eval":
            return eval_transform(image_size)
        if transform is None or callable(transform):
            return transform
        raise DataError(
            f"unknown transform {transform!r}; use 'train', 'eval', 'auto', None or a callable"
        )

    @property
    def targets(self) -> list[int]:
        """The label of every sample."""
        return [label for _, label in self.samples]

    @property
    def skipped(self) -> list[Path]:
        """The unreadable files skipped so far (``skip_corrupt=True``), in every process."""
        flagged = torch.nonzero(self._corrupt).flatten().tolist()
        return self._dropped + [self.samples[i][0] for i in flagged]

    @property
    def num_skipped(self) -> int:
        """How many unreadable files were skipped so far."""
        return len(self._dropped) + int(self._corrupt.sum())

    def summary(self) -> str:
        """One line: how many images in how many classes, from where, and what was skipped.

        Example:
            >>> import tempfile
            >>> root = Path(tempfile.mkdtemp())
            >>> (root / "a").mkdir(); (root / "b").mkdir()
            >>> Image.new("RGB", (4, 4)).save(root / "a" / "1.png")
            >>> _ = (root / "b" / "2.png").write_bytes(b"not a png")
            >>> data = ImageFolderDataset(root, skip_corrupt=True, validate=True)
            >>> data.summary().endswith("1 unreadable image skipped: 2.png")
            True
        """
        line = f"{len(self.samples)} images in {len(self.classes)} classes from {self.root}"
        skipped = self.skipped
        if skipped:
            names = ", ".join(p.name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            plural = "s" if len(skipped) > 1 else ""
            line += f"; {len(skipped)} unreadable image{plural} skipped: {names}"
        if self.passed_over:
            line += f"; {ImageListing(skipped=self.passed_over).note()}"
        return line

    def validate(self, decode: bool = True) -> list[Path]:
        """Check every image (and mask) now; return the unreadable files.

        ``decode=True`` decodes every file, which finds every unreadable one; ``decode=False``
        only reads headers (and checks PNG checksums), many times faster, which finds most.
        Without ``skip_corrupt`` a :class:`DataError` lists them all; with it they are dropped
        from :attr:`samples` and counted in :attr:`skipped`.
        """
        bad: list[tuple[Path, str]] = []
        for index in range(len(self.samples)):
            try:
                if decode:
                    self._load(index)
                else:
                    self._check(index)
            except DataError as error:
                bad.append((self.samples[index][0], str(error)))
        if bad and not self.skip_corrupt:
            listing = "\n".join(f"  {message}" for _, message in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DataError(
                f"{len(bad)} unreadable files in {self.root}:\n{listing}{more}\nReplace or "
                f"delete them, or {_SKIP_ADVICE}."
            )
        paths = {path for path, _ in bad}
        self._dropped += sorted(paths)
        self.samples = [(path, label) for path, label in self.samples if path not in paths]
        self._corrupt = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        return sorted(paths)

    def __len__(self) -> int:
        return len(self.samples)

    def _mask_path(self, path: Path) -> Path | None:
        if self.masks_root is None:
            return None
        mask_path = self.masks_root / path.relative_to(self.root).with_suffix(".png")
        if not mask_path.is_file():
            raise DataError(f"no mask {mask_path} for image {path}")
        return mask_path

    def _check(self, index: int) -> None:
        path = self.samples[index][0]
        for file in (path, self._mask_path(path)):
            if file is not None:
                _check_file(file)

    def _load(self, index: int) -> tuple[Tensor, int, Tensor | None]:
        path, label = self.samples[index]
        image = read_image(path)
        mask = None
        mask_path = self._mask_path(path)
        if mask_path is not None:
            mask = torch.from_numpy(_decode(mask_path, "L") > 127)
            if mask.shape != image.shape[1:]:
                raise DataError(
                    f"mask {mask_path} is {tuple(mask.shape)} but image {path} is "
                    f"{tuple(image.shape[1:])}; a mask must have the size of its image"
                )
        return image, label, mask

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        if not self.skip_corrupt:
            try:
                image, label, mask = self._load(index)
            except DataError as error:
                # chained to the decoder's error, not to ours: one traceback less to read
                raise DataError(
                    f"{error}. Replace or delete the file, or {_SKIP_ADVICE}"
                ) from error.__cause__
        else:
            image, label, mask = self._load_or_skip(index)
        return self._finish(image, label, mask)

    def _load_or_skip(self, index: int) -> tuple[Tensor, int, Tensor | None]:
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            if self._corrupt[candidate]:
                continue
            try:
                return self._load(candidate)
            except DataError as error:
                self._corrupt[candidate] = True
                warnings.warn(f"skipped: {error}", stacklevel=3)
        raise DataError(f"every one of the {len(self)} images in {self.root} is unreadable")

    def _finish(self, image: Tensor, label: int, mask: Tensor | None) -> tuple[Any, ...]:
        if self.transform is None:
            image = image.float() / 255
        elif mask is None:
            image = self.transform(tv_tensors.Image(image))
        else:
            image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask[None]))
            mask = mask.as_subclass(Tensor)[0].bool()
        image = image.as_subclass(Tensor)
        if mask is None:
            return image, label
        return image, label, mask

    def __repr__(self) -> str:
        return f"ImageFolderDataset({self.summary()})"
