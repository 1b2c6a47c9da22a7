"""bcosify.data: the synthetic shapes, image folders, transforms and their errors."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from bcosify import BcosifyError
from bcosify.data import (
    SHAPES,
    ImageFolderDataset,
    SyntheticShapes,
    build_dataset,
    eval_transform,
    train_transform,
    write_image_folder,
)
from bcosify.errors import DataError


def digest(image: torch.Tensor) -> str:
    return hashlib.sha1(image.numpy().tobytes()).hexdigest()


def make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", size, (10 * i, 100, 200)).save(root / name / f"{i}.png")
    return root


# --- the synthetic shapes ---------------------------------------------------------------------


def test_same_seed_and_index_give_the_same_image_and_other_seeds_do_not():
    a, b = SyntheticShapes(50, seed=3), SyntheticShapes(50, seed=3)
    for i in (0, 7, 49):
        assert torch.equal(a[i][0], b[i][0])
        assert a[i][1] == b[i][1]
    assert torch.equal(a[-1][0], a[49][0])
    other = SyntheticShapes(50, seed=4)
    assert all(not torch.equal(a[i][0], other[i][0]) for i in range(10))
    # the image depends on (seed, split, index) only, not on the length of the dataset
    assert torch.equal(SyntheticShapes(10, seed=3)[7][0], a[7][0])


def test_the_cache_returns_exactly_the_rendered_examples():
    plain = SyntheticShapes(12, image_size=32, seed=5, return_mask=True)
    cached = SyntheticShapes(12, image_size=32, seed=5, return_mask=True, cache=True)
    for _ in range(2):  # the first pass renders and stores, the second reads the cache
        for i in range(12):
            (x, y, m), (cx, cy, cm) = plain[i], cached[i]
            assert torch.equal(x, cx) and y == cy and torch.equal(m, cm)
    # what a caller does to an example does not reach the cache
    cached[0][0].zero_()
    cached[0][2].zero_()
    assert torch.equal(cached[0][0], plain[0][0]) and torch.equal(cached[0][2], plain[0][2])
    assert torch.equal(cached[-1][0], plain[11][0])


def test_items_are_float_images_in_unit_range_with_int_labels_and_bool_masks():
    data = SyntheticShapes(12, image_size=48, return_mask=True)
    image, label, mask = data[5]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert torch.equal(image, (image * 255).round() / 255)  # exact 8-bit values
    assert isinstance(label, int) and mask.shape == (48, 48) and mask.dtype == torch.bool
    assert len(SyntheticShapes(12)[0]) == 2
    with pytest.raises(IndexError):
        data[12]
    assert len(list(SyntheticShapes(4))) == 4  # iteration stops at the end


def test_splits_do_not_share_images():
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        data = SyntheticShapes(120, image_size=32, seed=0, split=split)
        for i in range(len(data)):
            key = digest(data[i][0])
            assert key not in seen, f"{split}[{i}] repeats {seen[key]}"
            seen[key] = f"{split}[{i}]"


def test_classes_are_balanced_and_sorted():
    data = SyntheticShapes(100)
    assert data.classes == SHAPES and list(SHAPES) == sorted(SHAPES) and len(SHAPES) == 10
    assert torch.bincount(torch.tensor(data.targets)).tolist() == [10] * 10
    assert [data[i][1] for i in range(20)] == data.targets[:20]
    subset = SyntheticShapes(9, classes=["star", "circle", "ring"])
    assert subset.classes == ("circle", "ring", "star")
    assert torch.bincount(torch.tensor(subset.targets)).tolist() == [3, 3, 3]


def test_masks_cover_exactly_where_the_object_was_drawn():
    data = SyntheticShapes(40, image_size=64, return_mask=True)
    for i in range(len(data)):
        image, _, mask = data[i]
        background = data.background(i)
        assert 0.01 < mask.float().mean() < 0.5  # non-empty, never the whole image
        changed = (image != background).any(0)
        # the object changes every pixel of its mask, and nothing beyond its anti-aliased edges
        assert changed[mask].float().mean() > 0.98
        # (two pixels: thin tips of stars and crescents are partly covered over a longer stretch)
        near = F.max_pool2d(mask[None, None].float(), 5, stride=1, padding=2)[0, 0].bool()
        assert not changed[~near].any()
        # and the object stands out from what it covers
        assert (image - background).abs().sum(0)[mask].mean() > 0.3


def test_object_colour_does_not_depend_on_the_class():
    data = SyntheticShapes(600, image_size=32, return_mask=True)
    colours = torch.zeros(len(data), 3)
    labels = torch.tensor(data.targets)
    for i in range(len(data)):
        image, _, mask = data[i]
        colours[i] = image[:, mask].mean(1)
    assert colours.std(0).min() > 0.2  # colours vary a lot between examples ...
    overall = colours.mean(0)
    for c in range(10):  # ... but each class mean is within 4 standard errors of the overall mean
        mine = colours[labels == c]
        error = mine.std(0) / len(mine) ** 0.5
        assert ((mine.mean(0) - overall).abs() < 4 * error).all(), (c, mine.mean(0), overall)


def test_bad_synthetic_arguments_raise_data_errors():
    with pytest.raises(DataError, match="unknown split 'dev'"):
        SyntheticShapes(10, split="dev")
    with pytest.raises(DataError, match="pentagon"):
        SyntheticShapes(10, classes=["circle", "pentagon"])
    with pytest.raises(DataError, match="seed"):
        SyntheticShapes(10, seed=-1)
    assert issubclass(DataError, BcosifyError) and issubclass(DataError, ValueError)


def test_synthetic_transform_moves_the_mask_with_the_image():
    data = SyntheticShapes(4, return_mask=True, transform=train_transform(32))
    for i in range(len(data)):
        image, _, mask = data[i]
        assert type(image) is torch.Tensor and type(mask) is torch.Tensor
        assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_dataloader_workers_render_the_same_images():
    data = SyntheticShapes(8, image_size=32)
    batches = list(DataLoader(data, batch_size=4, num_workers=2))
    images = torch.cat([images for images, _ in batches])
    assert torch.equal(images, torch.stack([data[i][0] for i in range(8)]))


# --- writing and reading image folders ---------------------------------------------------------


def test_write_image_folder_round_trips_images_labels_and_masks(tmp_path):
    data = SyntheticShapes(30, image_size=40, seed=1, return_mask=True)
    root = write_image_folder(data, tmp_path / "shapes")
    assert sorted(p.name for p in root.iterdir()) == sorted(SHAPES)
    assert (tmp_path / "shapes_masks" / "arrow" / "000000.png").is_file()
    read = ImageFolderDataset(root, transform=None, return_mask=True)
    assert read.classes == list(data.classes) and len(read) == 30
    by_name = {path.stem: i for i, (path, _) in enumerate(read.samples)}
    for i in range(len(data)):
        image, label, mask = data[i]
        image2, label2, mask2 = read[by_name[f"{i:06d}"]]
        assert torch.equal(image, image2) and label == label2 and torch.equal(mask, mask2)


def test_split_layout_and_build_dataset(tmp_path):
    for split in ("train", "val"):
        write_image_folder(SyntheticShapes(20, image_size=48, split=split), tmp_path / split)
    train = build_dataset(tmp_path, "train", 32)
    val = build_dataset(tmp_path, "val", 32, return_mask=True)
    assert isinstance(train, ImageFolderDataset) and train.root == tmp_path / "train"
    assert val.root == tmp_path / "val" and len(val) == 20
    image, label, mask = val[3]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert label == 1 and val.samples[3][0].name == "000011.png"  # arrow 0, 10; circle 1, 11
    assert train[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match="no 'test' split: found train, val"):
        build_dataset(tmp_path, "test")
    synthetic = build_dataset("synthetic", "test", 32, num_examples=5, return_mask=True)
    assert isinstance(synthetic, SyntheticShapes) and synthetic.split == "test"
    assert len(synthetic) == 5 and synthetic[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet")


def test_write_image_folder_refuses_a_full_folder_and_unsorted_classes(tmp_path):
    make_folder(tmp_path / "full", {"a": 1})
    with pytest.raises(DataError, match="not empty"):
        write_image_folder(SyntheticShapes(2), tmp_path / "full")

    class Unsorted(torch.utils.data.Dataset):
        classes = ("zebra", "ant")

    with pytest.raises(DataError, match="sorted order"):
        write_image_folder(Unsorted(), tmp_path / "new")


def test_single_root_folder_labels_follow_sorted_class_names(tmp_path):
    root = make_folder(tmp_path, {"dog": 2, "cat": 3})
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    data = ImageFolderDataset(root, image_size=24)  # no split: the evaluation transform
    assert data.classes == ["cat", "dog"] and data.targets == [0, 0, 0, 1, 1]
    image, label = data[4]
    assert image.shape == (3, 24, 24) and label == 1
    assert data.summary() == f"5 images in 2 classes from {root}"


# --- transforms --------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [train_transform, eval_transform])
def test_transforms_give_float_squares_in_unit_range(make):
    transform = make(28)
    inputs = [
        torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8),
        torch.rand(3, 31, 29),
        Image.new("RGB", (70, 50), (255, 0, 0)),
    ]
    for x in inputs:
        y = transform(x)
        assert y.shape == (3, 28, 28) and y.dtype == torch.float32
        assert y.min() >= 0 and y.max() <= 1
    red = transform(inputs[2])
    assert torch.allclose(red[0], torch.ones(28, 28)) and red[1:].abs().max() == 0


def test_eval_transform_resizes_the_short_side_then_crops_the_centre():
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[:, :, 64 - 16 : 64 + 16] = 255  # a bright vertical band in the middle
    out = eval_transform(56)(image)  # short side 64 -> 64, crop 56 x 56 from the centre
    assert out.shape == (3, 56, 56)
    assert out[:, :, 28].min() == 1 and out[:, :, 0].max() == 0


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*one subfolder per class") as error:
        ImageFolderDataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        ImageFolderDataset(tmp_path / "file.png")


def test_folder_without_class_subfolders(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class subfolders; it holds 1 images directly"):
        ImageFolderDataset(tmp_path)


def test_empty_class_folder_is_named(tmp_path):
    make_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("")
    with pytest.raises(DataError, match="dog holds no images") as error:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path / "dog") in str(error.value)
    assert "1 files without an image extension" in str(error.value)


def corrupt_folder(root: Path) -> tuple[Path, Path]:
    make_folder(root, {"cat": 3, "dog": 3})
    garbage = root / "cat" / "1.png"
    garbage.write_bytes(b"this is not a png")
    truncated = root / "dog" / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    return garbage, truncated


def test_corrupt_images_raise_naming_the_file(tmp_path):
    garbage, truncated = corrupt_folder(tmp_path)
    data = ImageFolderDataset(tmp_path, transform=None)  # lazy: listing works
    assert len(data) == 6 and data[0][0].shape == (3, 30, 40)
    with pytest.raises(DataError, match="skip_corrupt=True") as error:
        data[1]
    assert str(garbage) in str(error.value)
    with pytest.raises(DataError) as error:
        data[5]
    assert str(truncated) in str(error.value)
    with pytest.raises(DataError, match="2 unreadable files") as error:
        data.validate()
    assert str(garbage) in str(error.value) and str(truncated) in str(error.value)


def test_corrupt_image_in_a_dataloader_worker_arrives_as_a_data_error(tmp_path):
    garbage, _ = corrupt_folder(tmp_path)
    loader = DataLoader(ImageFolderDataset(tmp_path, image_size=16), batch_size=2, num_workers=1)
    with pytest.raises(DataError) as error:
        list(loader)
    assert str(garbage) in str(error.value)


def test_skip_corrupt_skips_and_counts_across_workers(tmp_path):
    garbage, truncated = corrupt_folder(tmp_path)
    data = ImageFolderDataset(tmp_path, image_size=16, skip_corrupt=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = torch.cat([x for x, _ in DataLoader(data, batch_size=2, num_workers=2)])
        again = list(DataLoader(data, batch_size=3))  # a second epoch counts nothing twice
    assert images.shape == (6, 3, 16, 16) and len(again) == 2
    assert data.num_skipped == 2 and sorted(data.skipped) == sorted([garbage, truncated])
    assert data.summary().endswith("2 unreadable images skipped: 1.png, 2.png")

    checked = ImageFolderDataset(tmp_path, skip_corrupt=True, validate=True)
    assert len(checked) == 4 and checked.num_skipped == 2
    assert all(path not in (garbage, truncated) for path, _ in checked.samples)


def test_all_corrupt_images_raise_even_when_skipping(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.jpg").write_bytes(b"\xff\xd8 broken")
    data = ImageFolderDataset(tmp_path, skip_corrupt=True)
    with warnings.catch_warnings(record=True), pytest.raises(DataError, match="every one"):
        data[0]


def test_missing_masks_are_reported(tmp_path):
    make_folder(tmp_path / "images", {"cat": 1})
    with pytest.raises(DataError, match="no mask folder"):
        ImageFolderDataset(tmp_path / "images", return_mask=True)
    (tmp_path / "images_masks").mkdir()
    data = ImageFolderDataset(tmp_path / "images", return_mask=True)
    with pytest.raises(DataError, match=r"no mask .*0\.png for image"):
        data[0]


# --- it is a real task -------------------------------------------------------------------------


def train_small_cnn(
    epochs: int = 8, train_size: int = 10_000, val_size: int = 2_000, log=None
) -> list[float]:
    """Train a small standard CNN on the shapes; return the validation accuracy after each epoch.

    Four 3x3 convolutions (16, 32, 64, 64 channels) with batch norm and ReLU, max pooling, global
    average pooling and a linear classifier; Adam (lr 2e-3, cosine decay), batches of 64.
    """
    torch.manual_seed(0)

    def stack(data: SyntheticShapes) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*(data[i] for i in range(len(data))), strict=True)
        return torch.stack(images), torch.tensor(labels)

    train_x, train_y = stack(SyntheticShapes(train_size, split="train"))
    val_x, val_y = stack(SyntheticShapes(val_size, split="val"))

    def block(cin: int, cout: int) -> list[torch.nn.Module]:
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return [conv, torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

    model = torch.nn.Sequential(
        *block(3, 16),
        torch.nn.MaxPool2d(2),
        *block(16, 32),
        torch.nn.MaxPool2d(2),
        *block(32, 64),
        torch.nn.MaxPool2d(2),
        *block(64, 64),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * -(-train_size // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    accuracies = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(train_size)
        for start in range(0, train_size, 64):
            batch = order[start : start + 64]
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            predictions = torch.cat([model(x).argmax(1) for x in val_x.split(500)])
        accuracies.append(float((predictions == val_y).float().mean()))
        if log is not None:
            log(f"epoch {len(accuracies)}: validation accuracy {accuracies[-1]:.1%}")
    return accuracies


@pytest.mark.slow
def test_a_small_cnn_needs_a_few_epochs_to_learn_the_shapes():
    accuracies = train_small_cnn()
    assert accuracies[0] < 0.8, f"learnt in one epoch: too easy ({accuracies})"
    assert accuracies[-1] >= 0.9, accuracies


def test_build_dataset_augments_only_the_train_split_of_a_folder_and_only_when_asked(tmp_path):
    make_folder(tmp_path / "train", {"cat": 2, "dog": 2})
    make_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    noise = torch.randint(0, 256, (30, 40, 3), generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.to(torch.uint8).numpy()).save(tmp_path / "train" / "cat" / "0.png")
    plain = build_dataset(tmp_path, "train", 16, augment=False)
    assert torch.equal(plain[0][0], plain[0][0])  # the evaluation transform: deterministic
    augmented = build_dataset(tmp_path, "train", 16)
    torch.manual_seed(0)
    draws = [augmented[0][0] for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


@pytest.mark.filterwarnings("ignore:skipped:UserWarning")
def test_bcosify_train_skips_corrupt_images_when_asked_and_says_so(tmp_path, capsys):
    from bcosify.cli import main

    for split in ("train", "val"):
        corrupt_folder(tmp_path / "data" / split)
    argv = ["train", "--model", "bcosify:small_cnn", "--data", str(tmp_path / "data")]
    argv += ["--recipe", "standard", "--epochs", "1", "--batch-size", "2", "--image-size", "16"]
    argv += ["--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "strict")]) == 1
    error = capsys.readouterr().err
    assert "2 unreadable files" in error and "--skip-corrupt" in error
    assert len(error.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "strict").exists()  # found by the scan, before training started
    assert main([*argv, str(tmp_path / "run"), "--skip-corrupt"]) == 0
    assert "2 unreadable images skipped: 1.png, 2.png" in capsys.readouterr().out


# --- decoding and classes ---------------------------------------------------------------------


def write_png16(path: Path, values, colour_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow writes 16-bit greyscale only from some modes)."""
    import struct
    import zlib

    import numpy as np

    values = np.asarray(values, dtype=">u2")
    rows = b"".join(b"\0" + row.tobytes() for row in values.reshape(values.shape[0], -1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
    from bcosify.data import read_image

    ramp = [[0, 257 * 64, 257 * 128, 65535]]  # 0, 1/4, 1/2 and 1 of the 16-bit range
    write_png16(tmp_path / "grey.png", ramp, colour_type=0)
    write_png16(tmp_path / "rgb.png", [[[v, v, v] for v in ramp[0]]], colour_type=2)
    for name in ("grey.png", "rgb.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape == (3, 1, 4)
        assert image[:, 0].tolist() == [[0, 64, 128, 255]] * 3, name


def test_a_fixed_class_list_numbers_a_folder_that_holds_some_of_its_classes(tmp_path):
    make_folder(tmp_path, {"cat": 1, "fox": 1})
    data = ImageFolderDataset(tmp_path, classes=["ant", "cat", "dog", "fox"], transform=None)
    assert data.classes == ["ant", "cat", "dog", "fox"] and sorted(data.targets) == [1, 3]
    with pytest.raises(DataError, match=r"not in the class list given: fox"):
        ImageFolderDataset(tmp_path, classes=["ant", "cat"])


def test_a_quick_scan_finds_broken_files_without_decoding_them(tmp_path):
    garbage, truncated = corrupt_folder(tmp_path)
    data = ImageFolderDataset(tmp_path, skip_corrupt=True)
    assert sorted(data.validate(decode=False)) == sorted([garbage, truncated])
    assert len(data) == 4 and data.num_skipped == 2
