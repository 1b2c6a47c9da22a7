"""Data for fine-tuning and evaluation: the built-in synthetic shapes and image folders.

Images are float RGB tensors ``(3, H, W)`` in ``[0, 1]``, never mean/std normalised: bcosify
models encode their input themselves.
"""

from .build import DEFAULT_SYNTHETIC_SIZES, build_dataset
from .classes import check_classes
from .folder import (
    IMAGE_EXTENSIONS,
    ImageFolderDataset,
    ImageListing,
    eval_transform,
    list_images,
    mask_folder_for,
    read_image,
    train_transform,
)
from .synthetic import ALL_SHAPES, EXTRA_SHAPES, SHAPES, SPLITS, SyntheticShapes, write_image_folder
from .unlabelled import UnlabelledImages, held_out_split

__all__ = [
    "ALL_SHAPES",
    "DEFAULT_SYNTHETIC_SIZES",
    "EXTRA_SHAPES",
    "IMAGE_EXTENSIONS",
    "SHAPES",
    "SPLITS",
    "ImageFolderDataset",
    "ImageListing",
    "SyntheticShapes",
    "UnlabelledImages",
    "build_dataset",
    "check_classes",
    "eval_transform",
    "held_out_split",
    "list_images",
    "mask_folder_for",
    "read_image",
    "train_transform",
    "write_image_folder",
]
