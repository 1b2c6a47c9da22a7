"""The real-network benchmark's measuring parts, on images made here (its photos and network
come from packages that the test machine need not have)."""

from __future__ import annotations

import pytest
import torch
from commands import benchmark_script
from PIL import Image

import bcosify
from bcosify.models import create


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


def test_agreement_where_the_original_is_sure_counts_only_those_crops(bench):
    teacher = torch.zeros(10, 5)
    teacher[:4, 0] = 10.0  # sure of class 0 on four crops; a five-way tie on the others
    student = torch.zeros(10, 5)
    student[:3, 0] = 1.0
    student[3:, 1] = 1.0  # one sure crop and every tied one disagree
    result = bench.agreement(student, teacher, photos=2)
    assert result["sure"] == (pytest.approx(0.75), 4)
    assert result["top1"][0] == pytest.approx(0.3)
    nowhere = bench.agreement(student, torch.zeros(10, 5), photos=2)
    assert nowhere["sure"] == (None, 0)


def test_the_report_is_a_table_of_the_stages_in_order(bench):
    row = {"top1": (0.5, 0.4, 0.6), "top5": (0.7, 0.6, 0.8), "minutes": 20.0}
    results = {
        "rows": {
            "default": {
                **row,
                "stage": "aligned",
                "steps": 300,
                "bias_share": 0.25,
                "sure": (0.9, 56),
                "explanation": 0.5,
            },
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
    assert lines[1].startswith("| exact | 0.50 [0.40, 0.60] | 0.70 [0.60, 0.80] |  |  | 20.0 |")
    assert lines[2].startswith("| aligned |")
    assert lines[2].endswith("| 0.90 (56 crops) | 0.50 | 20.0 | 300 | 25% |")


def test_explanation_cosine_is_one_for_the_original_and_less_further_from_it(bench):
    torch.manual_seed(0)
    original = create("torchvision:resnet18", num_classes=4).eval()
    images = torch.rand(3, 3, 32, 32)
    classes = torch.tensor([0, 1, 3])
    exact, _ = bcosify.convert(original, b=1.0, keep_bias=True)
    reference = bench.contribution_maps(exact, images, classes)
    assert reference.shape == (3, 32, 32)
    assert bench.map_cosine(reference, reference) == pytest.approx(1.0)
    moved, _ = bcosify.convert(original, b=1.25, keep_bias=True)
    assert bench.map_cosine(bench.contribution_maps(moved, images, classes), reference) < 0.99
