"""The demo end to end at test size, and the report it writes."""

from __future__ import annotations

import json
import re

import pytest

from bcosify.cli import main
from bcosify.report import Figure, Report


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = main(["demo", "--preset", "test", "--out", str(out), "--no-progress"])
    return status, out


def test_tiny_demo_writes_report_metrics_and_pictures(demo_run):
    status, tmp_path = demo_run
    assert status == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"standard", "B-cosified", "B-cos from scratch"}
    explained = {r["method"] for r in metrics["explanations"].values()}
    assert explained == {
        "bcos",
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "gradcam",
        "deeplift",
        "occlusion",
        "rise",
    }
    for result in metrics["explanations"].values():
        assert 0.0 <= result["mask_localisation"] <= 1.0
        assert result["seconds_per_image"] > 0
    html = (tmp_path / "report.html").read_text()
    referenced = re.findall(r"src='([^']+)'", html)
    assert referenced and all((tmp_path / path).is_file() for path in referenced)
    assert any(path.endswith(".png") and "gallery" in path for path in referenced)
    assert "Grid pointing game" in html and "Accuracy on the test set" in html


def test_report_refuses_to_reference_missing_images(tmp_path):
    report = Report("t", "lead", figures=[Figure("missing.png", "caption")])
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        report.write(tmp_path)


def test_explain_cli_writes_pictures_and_names_unreadable_images(demo_run, tmp_path, capsys):
    from bcosify.data import SyntheticShapes
    from bcosify.explain import save_image

    images = tmp_path / "images"
    for i in range(2):
        save_image(images / f"shape{i}.png", SyntheticShapes(2, 32)[i][0])
    (images / "broken.png").write_text("not an image")
    run = demo_run[1] / "runs" / "bcosified"
    status = main(
        ["explain", "--model", str(run), "--image", str(images), "--out", str(tmp_path / "out")]
    )
    captured = capsys.readouterr()
    assert status == 1 and "broken.png" in captured.err
    assert "completeness residual" in captured.out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        f"shape{i}_{kind}.png" for i in range(2) for kind in ("colour", "contributions", "figure")
    ]
    standard = demo_run[1] / "runs" / "standard"
    assert (
        main(
            [
                "explain",
                "--model",
                str(standard),
                "--image",
                str(images),
                "--out",
                str(tmp_path / "no"),
            ]
        )
        == 2
    )
    assert "B-cosify it first" in capsys.readouterr().err


def test_evaluate_cli_prints_a_table_and_writes_json(demo_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    status = main(
        [
            "evaluate",
            "--model",
            str(demo_run[1] / "runs" / "bcosified"),
            "--data",
            "synthetic",
            "--split",
            "test",
            "--image-size",
            "32",
            "--num-examples",
            "24",
            "--images",
            "4",
            "--grids",
            "2",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    assert "pointing 2x2" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert set(results["explanations"]) == {"bcos"}
    assert 0 <= results["accuracy"]["top1"] <= 1
