"""The real-network benchmark's measuring parts, on images made here (its photos and network
come from packages that the test machine need not have)."""

from __future__ import annotations

import pytest
import torch
from commands import benchmark_script
from PIL import Image


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("bench_real", "real_photos") as module:
        yield module


def test_five_crops_are_the_corners_and_the_centre_in_photo_order(bench, tmp_path):
    paths = []
    for i in range(2):
        pixels = torch.full((40, 50, 3), 60 * i, dtype=torch.uint8)
        pixels[:10, :10] = 255  # the top-left corner
        Image.fromarray(pixels.numpy()).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    crops = bench.five_crops(paths, 20)
    assert crops.shape == (10, 3, 20, 20)
    assert float(crops[0, :, :10, :10].min()) == 1.0  # photo 0's top-left crop holds the corner
    assert float(crops[5, :, 15:, 15:].max()) == pytest.approx(60 / 255)  # photo 1, not photo 0


def test_agreement_intervals_resample_whole_photos(bench):
    teacher = torch.randn(20, 10)
    student = teacher.clone()
    student[:5] = -student[:5]  # the first photo's five crops disagree
    result = bench.agreement(student, teacher, photos=4)
    mean, low, high = result["top1"]
    assert mean == 0.75 and low < mean <= high <= 1.0
    assert result["top5"][0] == pytest.approx(0.75)


def test_the_report_is_a_table_of_the_stages_in_order(bench):
    row = {"top1": (0.5, 0.4, 0.6), "top5": (0.7, 0.6, 0.8), "minutes": 20.0}
    results = {
        "rows": {
            "default": {**row, "stage": "aligned", "steps": 300, "bias_share": 0.25},
            "exact": {**row, "stage": "exact"},
        },
        "train_photos": 60,
        "test_photos": 52,
        "budget": 1200.0,
        "image_size": 160,
        "threads": 1,
    }
    text = bench.report(results, "bench_real.py", ("1.0", "2.0"))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| exact | 0.50 [0.40, 0.60] | 0.70 [0.60, 0.80] | 20.0 |")
    assert lines[2].startswith("| aligned |") and lines[2].endswith("| 300 | 25% |")
