"""The benchmark scripts run (quick mode, tiny shapes) so that they cannot rot."""

from __future__ import annotations

import importlib
import operator
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from bcosify.nn import BcosConv2d

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = (
    "common",
    "bench_layers",
    "bench_demo",
    "bench_convert",
    "bench_fused",
    "bench_colour",
    "bench_layout",
)


@pytest.fixture(scope="module")
def scripts():
    """The benchmark modules, imported as the scripts import each other (from their folder)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in SCRIPTS}
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in SCRIPTS:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def bench(scripts):
    return scripts["bench_layers"]


def tiny_shapes(bench):
    return [
        bench.LayerShape("tiny 3x3", 2, 6, 4, 4, 3, 1),
        bench.LayerShape("tiny 1x1", 2, 3, 8, 8, 1, 0),
    ]


def test_quick_run_prints_the_table_without_the_official_package(bench, capsys):
    assert bench.main(["--quick"], shapes=tiny_shapes(bench)) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 4  # two shapes x (nn.Conv2d, ours)
    assert all(bench.OFFICIAL not in row for row in rows)
    assert f"forward+backward at most {bench.TARGET_RATIO}x" in out
    assert "Machine:" in out and "torch" in out


def test_write_replaces_only_its_own_section(scripts, tmp_path):
    common = scripts["common"]
    docs = tmp_path / "docs" / "benchmarks.md"
    common.write_section(docs, "bench_a", "first")
    assert docs.read_text().startswith("# Benchmarks")
    docs.write_text(docs.read_text() + "\n## Another section\n\nkept\n")
    common.write_section(docs, "bench_b", "other")
    common.write_section(docs, "bench_a", "second")
    text = docs.read_text()
    assert "second" in text and "first" not in text and "other" in text
    start, end = common.markers("bench_a")
    assert text.count(start) == 1 and text.count(end) == 1
    assert text.index("kept") < text.index(common.markers("bench_b")[0])  # appended


def test_missing_official_package_is_a_clear_error(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install"):
        bench.load_official(tmp_path)


def test_demo_benchmark_writes_its_section(scripts, tmp_path, capsys):
    docs = tmp_path / "benchmarks.md"
    argv = [
        "--preset",
        "test",
        "--seeds",
        "3",
        "--out",
        str(tmp_path / "demo"),
        "--write",
        str(docs),
    ]
    assert scripts["bench_demo"].main(argv) == 0
    text = docs.read_text()
    start, end = scripts["common"].markers("bench_demo")
    assert start in text and end in text
    for row in ("| original |", "| B-cosified |", "| bcos (B-cosified) |", "| lime (original) |"):
        assert row in text
    assert "seeds 3" in text and "bench_demo.py --preset test" in text and "Machine:" in text
    assert "1 of 1" in text or "0 of 1" in text  # targets counted over the seeds
    assert (tmp_path / "demo" / "seed-3" / "report.html").is_file()
    # --reuse reads a finished seed instead of running it again: the same table
    table = text[text.index("| model |") : text.index(end)]
    (tmp_path / "demo" / "seed-3" / "report.html").unlink()
    capsys.readouterr()
    assert scripts["bench_demo"].main([*argv, "--reuse"]) == 0
    assert "seed 3: read from" in capsys.readouterr().out
    assert not (tmp_path / "demo" / "seed-3" / "report.html").exists()
    again = docs.read_text()
    assert again[again.index("| model |") : again.index(end)] == table


def test_demo_benchmark_gives_the_mean_and_range_over_seeds(scripts):
    spread = scripts["bench_demo"].spread
    assert spread([0.5, 0.7, 0.6], lambda v: f"{v:.2f}") == "0.60 (0.50 to 0.70)"
    assert spread([2.0, None], lambda v: f"{v:.1f}") == "2.0, 1 n/a"
    assert spread([None], str) == "n/a"


@pytest.fixture(scope="module")
def gpu_bench(scripts):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_gpu")
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("bench_gpu", None)


def test_gpu_benchmark_quick_runs_on_the_cpu(gpu_bench, tmp_path, capsys):
    # every model eagerly in float32, and the compiled bf16 path on the smallest model: the
    # full grid of the quick run takes minutes on a busy two-core machine
    eager = ["--quick", "--modes", "eager", "--precisions", "fp32"]
    assert gpu_bench.main(eager) == 0
    docs = tmp_path / "benchmarks.md"
    compiled = ["--quick", "--models", "vit_b_16", "--modes", "compiled", "--precisions", "bf16"]
    assert gpu_bench.main([*compiled, "--write", str(docs)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "|---" not in line]
    measured = [row for row in rows if not row.startswith("| model")]
    assert len(measured) == (3 + 1) * 4  # models x (layer, training, explanation, own gradient)
    for model in gpu_bench.MODELS:
        assert f"| {model} | fp32 | eager | training step |" in out
    assert "| vit_b_16 | bf16 | compiled | explanation |" in out
    for row in measured:  # throughputs and ratios are positive numbers
        *_, original, bcos, ratio = (cell.strip() for cell in row.strip("|").split("|"))
        assert float(original) > 0 and float(bcos) > 0 and float(ratio) > 0
    text = docs.read_text()
    assert "<!-- bench_gpu:start -->" in text and "device: CPU" in text


def test_compiled_targets_set_each_model_in_its_faster_mode(scripts):
    # compiling made some originals slower (ConvNeXt on this CPU): a B-cos model compiled
    # against the original compiled would then flatter B-cos
    bench = scripts["bench_convert"]
    first = {"original_compiled_first": 30.0, "bcos_compiled_first": 60.0}
    rows = {
        "slow-compiled-original": dict(
            first, original=1.0, original_compiled=2.0, bcos=1.4, bcos_compiled=1.5
        ),
        "compiled-helps": dict(
            first, original=1.0, original_compiled=0.5, bcos=1.6, bcos_compiled=0.55
        ),
    }
    text = bench.report_compiled(rows, 224, 8, 3, "cmd")
    assert "| slow-compiled-original |" in text and "| 1.40x |" in text  # 1.4 / 1.0
    assert "not met (1 of 2, worst 1.40x)" in text
    assert "median at most 1.15x: not met (1.25x)" in text  # median of 1.40 and 1.10


def test_jobs_in_processes_come_back_in_order_each_on_one_thread(scripts):
    in_processes = scripts["common"].in_processes
    jobs = [(partial(pow, 2, 3),), (torch.get_num_threads,), (partial(pow, 5, 0),)]
    call = operator.methodcaller("__call__")
    assert list(in_processes(call, jobs, 2)) == [8, 1, 1]
    assert list(in_processes(pow, [(2, 3)], 2)) == [8]  # one job: here
    with pytest.raises(ValueError, match="invalid literal"):  # a worker's error reaches us
        list(in_processes(int, [("1",), ("one",)], 2))


def test_fused_benchmark_compares_both_paths_on_the_same_network(scripts, capsys):
    fused = scripts["bench_fused"]
    assert fused.main(["--quick", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("| small CNN"))
    *_, out_gap, grad_gap, _ = row.split("|")
    # the same function and gradients either way, up to float64 rounding
    assert float(out_gap) < 1e-10 and float(grad_gap) < 1e-8
    # the plain path was undone
    layer = BcosConv2d(3, 4, 3, b=1.1)
    assert "FusedBcosConv2d" in layer(torch.rand(1, 3, 5, 5, requires_grad=True)).grad_fn.name()


def test_layout_benchmark_times_every_call_in_both_layouts_with_the_same_attributions(
    scripts, capsys
):
    layout = scripts["bench_layout"]
    assert layout.main(["--quick", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("| original", "| B-cosified"))]
    assert len(rows) == len(layout.calls((2,)))
    assert all(float(row.split("|")[-2]) < 1e-3 for row in rows)  # the same attributions


def test_colour_control_labels_each_image_by_its_objects_hue(scripts):
    colour = scripts["bench_colour"]
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1:3, 1:3] = True
    hues = [(1.0, 0.1, 0.1), (0.2, 0.9, 0.2), (0.2, 0.1, 1.0), (0.9, 0.2, 0.9)]
    shapes = []
    for shape, rgb in enumerate(hues):
        image = torch.rand(3, 4, 4)
        image[:, mask] = torch.tensor(rgb)[:, None]
        shapes.append((image, shape, mask))
    by_hue = colour.ByHue(shapes)
    # red, green, blue, magenta: sectors 0, 2, 4 and 5 of six
    assert by_hue.targets == [0, 2, 4, 5] and len(by_hue) == 4
    image, label, kept = by_hue[2]
    assert label == 4 and torch.equal(image, shapes[2][0]) and torch.equal(kept, mask)


def test_colour_report_keeps_every_lever_and_says_what_was_not_measured(scripts):
    colour = scripts["bench_colour"]
    run = {
        "accuracy": 0.5,
        "colour_error": 0.3,
        "shuffled": 0.45,
        "rounded": 0.2,
        "antisymmetric": 0.9,
        "pointing_bcos": None,
        "pointing_bcos_windows": None,
        "pointing_occlusion": 0.7,
        "date": "2026-12-07",
    }
    text = colour.report({"B = 3": [run, {**run, "accuracy": 0.7}]}, [0, 1], "cmd", (0.1, 0.2))
    row = next(line for line in text.splitlines() if line.startswith("| B = 3"))
    assert "60.0% (50.0% to 70.0%)" in row and row.count("n/a") == 2
    assert "Measured on 2026-12-07" in text


def test_colour_alignment_lever_adds_one_minus_the_explanations_cosine(scripts):
    from torch import nn
    from torch.nn import functional as F

    from bcosify.explain import explain
    from bcosify.nn import InputEncoding
    from bcosify.train.losses import classification_loss

    colour = scripts["bench_colour"]
    torch.manual_seed(0)
    model = nn.Sequential(
        InputEncoding(), BcosConv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    images, labels = torch.rand(3, 3, 8, 8), torch.tensor([0, 2, 3])
    outputs = model(images)
    loss = colour.Alignment(model, "bce", 0.5)(outputs, images, labels)
    e = explain(model, images, labels)
    cosine = F.cosine_similarity(e.weights.flatten(1), e.inputs.flatten(1), dim=1)
    classification = classification_loss("bce", outputs, labels)
    assert torch.allclose(loss, classification + 0.5 * (1 - cosine).mean(), atol=1e-5)
    # the term reaches the weights through W(x) (the second backward pass), not only the loss
    (loss - classification).backward()
    assert model[1].weight.grad.abs().sum() > 0
