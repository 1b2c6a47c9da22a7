"""Real photographs from Debian and Python packages, for the real-network benchmark.

Nothing is downloaded at run time: the photos are the files that Debian's ``opencv-doc``,
``plasma-workspace-wallpapers``, ``mate-backgrounds``, ``ukui-wallpapers`` and
``lomiri-wallpapers`` and the ``scikit-image`` and ``scikit-learn`` wheels install. ``gather``
installs the Debian packages when it may (``apt-get``, as root) and copies every photo once,
its shorter side resized to ``short_side``, to a cache folder split by photo into ``train/``
(the unlabelled images a B-cosification may read) and ``test/`` (held out).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["DEBIAN_PACKAGES", "Photos", "candidates", "gather"]

DEBIAN_PACKAGES = (
    "opencv-doc",
    "plasma-workspace-wallpapers",
    "mate-backgrounds",
    "ukui-wallpapers",
    "lomiri-wallpapers",
)
# scikit-image's colour photographs (its other samples are grey, synthetic or microscopy)
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
)
# calibration chessboards, stereo pairs and logos of opencv-doc: not photographs of anything,
# or the same scene twice
_EXCLUDED = re.compile(
    r"(^|/)(left|right)\d*\.|logo|chessboard|calib|mask|board|_mod|ela_|aloeR|leuvenB|Suzanne2|"
    r"screenshot|text_|scenetext_(char|segmented|word)|trimap|gradient|detect_blob|imagetext|"
    r"(^|/)ml\.|(^|/)pic\d|polygon|peilin_shape|rubberwhale2|graf3",
    re.IGNORECASE,
)
_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Photos:
    """The cache folder of :func:`gather`: ``root/train`` and ``root/test``, one file a photo."""

    root: Path
    train: tuple[Path, ...]
    test: tuple[Path, ...]


def _installed_files(package: str) -> list[Path]:
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [Path(line) for line in listing.splitlines() if line.lower().endswith(_EXTENSIONS)]


def _install(packages: list[str]) -> None:
    """``apt-get install`` what is missing, when running as root; otherwise say what to do."""
    missing = [p for p in packages if not _installed_files(p)]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"photos: not installed and cannot install: {' '.join(missing)} (apt-get as root)")
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=False,
        env=env,
        capture_output=True,
    )


def _one_per_wallpaper(files: list[Path]) -> list[Path]:
    """KDE wallpapers ship one picture in several sizes (and a dark variant): the largest
    light one; other packages' files are kept as they are."""
    chosen: dict[Path, Path] = {}
    for path in files:
        parts = path.parts
        if "contents" in parts and "images" in parts:
            key = Path(*parts[: parts.index("contents")])
            if key not in chosen or path.stat().st_size > chosen[key].stat().st_size:
                chosen[key] = path
        elif "contents" not in parts:
            chosen[path] = path
    return list(chosen.values())


def _same_picture_in_other_sizes(files: list[Path]) -> list[Path]:
    """mate-backgrounds ships ``Elephants.jpg`` and ``Elephants_3840x2160.jpg``: keep one."""
    kept: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: p.stat().st_size, reverse=True):
        key = str(path.parent / re.sub(r"_\d+x\d+$", "", path.stem))
        kept.setdefault(key, path)
    return list(kept.values())


def candidates(install: bool = True, min_side: int = 200) -> list[Path]:
    """Every photo the packages hold, at least ``min_side`` pixels on its shorter side."""
    if install:
        _install(list(DEBIAN_PACKAGES))
    files: list[Path] = []
    for package in DEBIAN_PACKAGES:
        installed = _installed_files(package)
        if package == "opencv-doc":
            installed = [p for p in installed if "/examples/" in str(p)]
        files += installed
    import skimage.data
    import sklearn.datasets

    files += [Path(skimage.data.__file__).parent / name for name in SKIMAGE_PHOTOS]
    files += [Path(p) for p in sklearn.datasets.load_sample_images().filenames]
    files = [p for p in files if p.is_file() and not _EXCLUDED.search(f"{p.parent.name}/{p.name}")]
    files = _same_picture_in_other_sizes(_one_per_wallpaper(files))
    photos = []
    seen: set[str] = set()
    for path in sorted(files):
        try:
            with Image.open(path) as image:
                if min(image.size) < min_side or image.mode not in ("RGB", "RGBA", "P"):
                    continue
        except OSError:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            photos.append(path)
    return photos


def gather(
    root: str | Path,
    *,
    train_photos: int = 60,
    short_side: int = 320,
    seed: int = 0,
    install: bool = True,
) -> Photos:
    """The photos, resized and split by photo into ``root/train`` and ``root/test``.

    A photo is in one split only (its crops never cross); the split is a seeded shuffle of the
    photos sorted by path, so it is the same on every machine with the same packages.
    """
    root = Path(root)
    found = candidates(install=install)
    if len(found) <= train_photos:
        raise SystemExit(f"only {len(found)} photos found; need more than {train_photos}")
    order = list(found)
    random.Random(seed).shuffle(order)
    splits = {"train": order[:train_photos], "test": order[train_photos:]}
    written: dict[str, list[Path]] = {}
    for split, paths in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        written[split] = []
        for path in paths:
            name = re.sub(r"[^A-Za-z0-9]+", "_", str(path.with_suffix(""))).strip("_")
            target = folder / f"{name[-60:]}.png"
            if not target.is_file():
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    scale = short_side / min(image.size)
                    size = (round(image.width * scale), round(image.height * scale))
                    image.resize(size, Image.Resampling.BICUBIC).save(target)
            written[split].append(target)
    return Photos(root, tuple(written["train"]), tuple(written["test"]))
