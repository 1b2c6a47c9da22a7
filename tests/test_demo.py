"""The demo end to end at test size, the report it writes, and the cached original."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from browser import CHROMIUM, measure_page
from commands import run_cli

import bcosify
from bcosify.cli import main
from bcosify.demo import PRESETS
from bcosify.demo.evaluation import Evaluation
from bcosify.demo.training import Trainer, datasets, train_original
from bcosify.evaluate import EXPLAINER_NAMES, build_explainer, correct, grid_pointing_game
from bcosify.nn import BcosConv2d, InputEncoding
from bcosify.report import Figure, Report, Table
from bcosify.train import Normalized
from bcosify.train.prepare import input_normalization


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = main(["demo", "--preset", "test", "--out", str(out), "--no-progress"])
    return status, out


def qualifying(model: torch.nn.Module, test) -> tuple[int, int]:
    """The test images ``model`` classifies correctly (the test preset's pointing game takes
    every one: confidence 0) and the distinct classes among them."""
    hits = correct(model.eval(), test, batch_size=16)
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    return int(hits.sum()), len(set(labels[hits].tolist()))


def test_tiny_demo_writes_report_metrics_and_pictures(demo_run, tmp_path):
    status, out = demo_run
    assert status == 0
    settings = PRESETS["test"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {
        "original",
        "original fine-tuned",
        "B-cosified",
        "B-cos from scratch",
    }
    for value in metrics["accuracy"].values():
        top1 = value["top1"]
        assert 0 <= top1["low"] <= top1["mean"] <= top1["high"] <= 1
    assert {r["method"] for r in metrics["explanations"].values()} == set(EXPLAINER_NAMES)
    # every post-hoc method explains both the original and the B-cosified model
    for model in ("original", "B-cosified"):
        on = {r["method"] for r in metrics["explanations"].values() if r["model"] == model}
        assert on >= set(EXPLAINER_NAMES) - {"bcos"}, (model, on)
    for name, fidelity in metrics["colour_fidelity"].items():
        if "colour_error" in fidelity:  # measured: all three intervals are colour distances
            for key in ("colour_error", "shuffled_control", "rounded_reference"):
                value = fidelity[key]
                assert 0 <= value["low"] <= value["mean"] <= value["high"] <= 1, (name, key)
        else:
            assert fidelity["error"], name
    # the models as the demo saved them, each judged again on the test split
    test = datasets(settings)["test"]
    trainer = Trainer(settings, datasets(settings), tmp_path, progress=False)
    original, _, run = train_original(settings, trainer, out / "cache")
    assert run["cached"]
    models = {
        "original": Normalized(original.eval(), *input_normalization(original)),
        "B-cosified": bcosify.load(out / "runs" / "bcosified" / "model"),
        "B-cos from scratch": bcosify.load(out / "runs" / "scratch" / "model"),
    }
    for result in metrics["explanations"].values():
        inside = result["mask_localisation"]
        assert 0.0 <= inside["low"] <= inside["mean"] <= inside["high"] <= 1.0
        assert inside["count"] == settings.eval_images
        assert result["seconds_per_image"] > 0
        assert set(result["pointing_game"]) == {"2x2"}
        game = result["pointing_game"]["2x2"]
        images, classes = qualifying(models[result["model"]], test)
        accuracy = metrics["accuracy"][result["model"]]["top1"]["mean"]
        assert images == round(accuracy * settings.num_test)
        if classes >= 4:  # a game to play: it was played
            assert "error" not in game, game
            assert game["low"] <= game["mean"] <= game["high"] and game["count"] == settings.grids
            if result["method"] == "bcos":  # and again at occlusion's resolution
                coarse = result["pointing_game_at_occlusion_windows"]["2x2"]
                assert coarse["pool"] == settings.image_size // 2
                assert 0 <= coarse["low"] <= coarse["mean"] <= coarse["high"] <= 1
                assert coarse["count"] == settings.grids
        else:  # barely trained models: too few classes, and the error says how many exactly
            assert (
                f"only {classes} class(es) have one ({images} of {len(test)} images"
                in game["error"]
            ), (game, classes, images)
    layer = metrics["explanations"]["gradcam (original)"]["layer"]
    assert layer["resolution"] >= 7 and layer["name"].startswith("model.features")
    # the original trained until a continuation gained too little, or to the last run
    original_run = metrics["original_training"]
    assert not original_run["cached"] and 2 <= original_run["cycles"] <= settings.max_cycles
    assert len(original_run["cycle_gains"]) == original_run["cycles"] - 1
    curves = metrics["training_curves"]
    assert curves["B-cosified"]["epoch"][0] == 0  # converted, before fine-tuning
    assert len(curves["B-cos from scratch"]["epoch"]) == settings.scratch_epochs
    assert all(t >= 0 for t in curves["B-cosified"]["seconds"])
    assert metrics["targets"] == expected_targets(metrics)
    html = (out / "report.html").read_text()
    referenced = re.findall(r"src='([^']+)'", html)
    assert referenced and all((out / path).is_file() for path in referenced)
    assert any(path.endswith(".png") and "gallery" in path for path in referenced)
    for heading in ("Targets", "Accuracy on the test set", "The cost of an interpretable model"):
        assert f"<h2>{heading}</h2>" in html
    assert "pointing 2x2" in html  # gallery columns carry their method's score


def expected_targets(metrics: dict) -> dict[str, bool | None]:
    """The demo's targets judged again from the numbers it reports: None where a pointing game
    or the colour fidelity could not be measured."""

    results = metrics["explanations"]
    games = {label: r["pointing_game"]["2x2"] for label, r in results.items()}
    own, scratch = games["bcos (B-cosified)"], games["bcos (B-cos from scratch)"]
    gap = metrics["accuracy_gap_to_original"]["B-cosified"]["low"]
    colour = metrics["colour_fidelity"]["B-cosified"]
    targets: dict[str, bool | None] = {"bcosified_within_1_point_of_the_original": 100 * gap >= -1}
    for model, slug in (("original", "original"), ("B-cosified", "bcosified_model")):
        played = [
            games[label]
            for label, r in results.items()
            if r["method"] != "bcos" and r["model"] == model and "error" not in games[label]
        ]
        targets[f"bcos_pointing_game_2x2_above_every_posthoc_on_the_{slug}"] = (
            None if "error" in own or not played else all(own["low"] > g["high"] for g in played)
        )
    targets["bcosified_pointing_game_2x2_not_below_scratch"] = (
        None if "error" in own or "error" in scratch else own["high"] >= scratch["low"]
    )
    targets["bcosified_colour_error_at_most_0.10"] = (
        None if "colour_error" not in colour else colour["colour_error"]["high"] <= 0.10
    )
    targets["bcos_20x_faster_than_integrated_gradients_50_steps"] = metrics["speed"]["ratio"] >= 20
    targets["under_5_minutes"] = metrics["total_seconds"] < 300
    return targets


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install chromium")
def test_the_bcos_pointing_game_is_also_scored_at_occlusions_resolution():
    # four classes of solid colours, told apart by a linear B-cos model (B = 1)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    labels = torch.arange(4).repeat(4)
    # noisy enough that evidence changes sign from pixel to pixel: pooling then matters
    noise = 0.7 * torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    images = colours[labels][:, :, None, None] * 0.3 + noise
    test = torch.utils.data.TensorDataset(images, labels, torch.ones(16, 8, 8, dtype=torch.bool))
    layer = BcosConv2d(6, 4, 1, b=1.0)
    with torch.no_grad():
        layer.weight.copy_(torch.cat([colours - 0.5, 0.5 - colours], 1)[:, :, None, None])
    model = torch.nn.Sequential(
        InputEncoding(), layer, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    s = replace(PRESETS["test"], image_size=8, classes=4, grids=4, eval_images=8, bootstrap=50)
    evaluation = Evaluation(s, test)
    result = evaluation.run(model, "linear", "bcos", {})
    coarse = result["pointing_game_at_occlusion_windows"]["2x2"]
    assert coarse["pool"] == 4 == evaluation.options("occlusion", 2)["window"]
    direct = grid_pointing_game(
        model, build_explainer("bcos", model), test, num_grids=4, threshold=0.0, pool=4
    )
    assert coarse["mean"] == pytest.approx(float(direct.scores.mean()))
    assert coarse["count"] == 4 and "error" not in result["pointing_game"]["2x2"]
    assert coarse["mean"] != pytest.approx(result["pointing_game"]["2x2"]["mean"], abs=0.01)
    assert "pointing_game_at_occlusion_windows" not in evaluation.run(
        model, "linear", "saliency", {}
    )


def test_the_report_fits_a_1280_pixel_window_and_every_image_loads(demo_run):
    found = measure_page(demo_run[1] / "report.html", width=1280)
    assert found["width"] == 1280 and found["pageWidth"] <= 1280
    assert found["overflowing"] == []
    images = found["images"]
    assert len(images) > 10 and all(image["loaded"] for image in images), images
    gallery = [image for image in images if image["src"].startswith("gallery/")]
    for image in gallery:  # shown at their own size, never blurred by the browser
        assert image["natural"] >= 96 and image["rendering"] == "pixelated"
        assert image["natural"] <= image["shown"] <= image["natural"] + 2  # + the border


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install chromium")
def test_the_browser_check_sees_overflow_and_missing_images(tmp_path):
    from bcosify.explain import save_image

    save_image(tmp_path / "ok.png", torch.rand(8, 8, 3))
    report = Report("t", "lead", figures=[Figure("ok.png", "fine")])
    report.tables.append(Table("wide", ["a"], [["x" * 400]]))  # scrolls in its own box
    report.write(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert measure_page(tmp_path / "report.html")["overflowing"] == []
    wide = "<div style='width: 2000px'>too wide</div><img src='missing.png'>"
    (tmp_path / "broken.html").write_text(page.replace("</body>", wide + "</body>"))
    found = measure_page(tmp_path / "broken.html")
    assert found["pageWidth"] > 1280 and "div" in found["overflowing"]
    assert [image["loaded"] for image in found["images"]] == [True, False]


def test_report_refuses_to_reference_missing_images(tmp_path):
    report = Report("t", "lead", figures=[Figure("missing.png", "caption")])
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        report.write(tmp_path)


def test_the_bcosified_model_averages_where_the_original_max_pools(demo_run):
    out = demo_run[1]

    def pools(run: str) -> set[type]:
        model = bcosify.load(out / "runs" / run / "model")
        kinds = (torch.nn.MaxPool2d, torch.nn.AvgPool2d)
        return {type(m) for m in model.modules() if isinstance(m, kinds)}

    assert pools("bcosified") == {torch.nn.AvgPool2d}
    assert pools("scratch") == {torch.nn.MaxPool2d}  # the baseline trains faster with it
    assert "converted to average pooling" in (out / "report.html").read_text()


def test_the_trained_original_is_cached_by_its_settings(demo_run, tmp_path, capsys):
    settings = PRESETS["test"]
    cache = demo_run[1] / "cache"
    trainer = Trainer(settings, datasets(settings), tmp_path, progress=False)
    _, _, run = train_original(settings, trainer, cache)
    assert run["cached"] and "from the cache" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # nothing trained
    first = json.loads((demo_run[1] / "metrics.json").read_text())["original_training"]
    assert run["key"] == first["key"] and run["cycle_gains"] == first["cycle_gains"]
    # settings the original depends on change the key; those it does not, do not
    evaluation_only = replace(settings, grids=7, lime_samples=3)
    same = Trainer(evaluation_only, trainer.data, tmp_path, progress=False)
    assert train_original(evaluation_only, same, cache)[2]["cached"]
    changed = replace(settings, lr_standard=1e-2)
    other = Trainer(changed, trainer.data, tmp_path, progress=False)
    _, _, fresh = train_original(changed, other, cache)
    assert not fresh["cached"] and fresh["key"] != run["key"]
    # an unreadable entry is trained again, not an error, and what is stored loads exactly
    entry = cache / f"original-{fresh['key']}"
    (entry / "run.json").write_text("{not json")
    trained, control, again = train_original(changed, other, cache)
    assert not again["cached"] and json.loads((entry / "run.json").read_text())["key"]
    loaded, loaded_control, reloaded = train_original(changed, other, cache)
    assert reloaded["cached"] and reloaded["control_curve"] == again["control_curve"]
    for a, b in ((loaded, trained), (loaded_control, control)):
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y)
    assert not all(  # the control is the original trained further
        torch.equal(x, y)
        for x, y in zip(trained.state_dict().values(), control.state_dict().values(), strict=True)
    )


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
    control = demo_run[1] / "runs" / "original-1"  # an ordinary model
    assert (
        main(
            [
                "explain",
                "--model",
                str(control),
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


def test_demo_refuses_bad_arguments_in_one_line(tmp_path):
    for argument, message in ((["--threads", "0"], "--threads"), (["--seed", "-1"], "--seed")):
        status, _, error = run_cli("demo", "--out", str(tmp_path), *argument)
        assert status == 2 and message in error and len(error.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing started
