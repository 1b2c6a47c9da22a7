"""``bcosify train`` on labelled texts: a transformers folder trained, then B-cosified."""

from __future__ import annotations

import json

import pytest
import torch
from commands import run_cli

import bcosify
from bcosify.data.text import SyntheticTexts
from bcosify.models.text import load_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    data = SyntheticTexts("train", 40, seed=0, num_classes=2)
    for split, (start, stop) in {"train": (0, 32), "val": (32, 40)}.items():
        lines = [
            json.dumps({"text": data.example(i).text, "label": data.classes[data[i][1]]})
            for i in range(start, stop)
        ]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    config = transformers.BertConfig(
        vocab_size=data.tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        num_labels=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "bert")
    data.tokenizer.save_pretrained(str(root / "bert"))
    return root


def test_train_then_bcosify_a_text_classifier_from_the_command_line(text_files, tmp_path):
    common = ["--data", str(text_files / "train.jsonl"), "--val-data"]
    common += [str(text_files / "val.jsonl"), "--epochs", "1", "--batch-size", "8"]
    common += ["--max-length", "22", "--no-progress"]
    first = ["train", "--model", str(text_files / "bert"), "--recipe", "standard"]
    status, out, err = run_cli(*first, "--out", str(tmp_path / "original"), *common)
    assert status == 0, err
    second = ["train", "--model", str(tmp_path / "original"), "--recipe", "bcosify-lm"]
    status, out, err = run_cli(*second, "--out", str(tmp_path / "lm"), *common)
    assert status == 0, err
    assert "finished after 4 steps" in out
    model = bcosify.load(tmp_path / "lm" / "model")
    tokenizer = load_tokenizer(tmp_path / "lm" / "model")
    assert isinstance(model, bcosify.BcosTextModel)
    assert model.config.class_names == ["animals", "food"]
    e = bcosify.explain_text(model, tokenizer, ["the cat was here", "not cat but bread"])
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all()


def test_text_mistakes_are_one_line(text_files, tmp_path):
    argv = ["train", "--model", "bcosify:small_cnn", "--recipe", "standard", "--no-progress"]
    status, _, err = run_cli(
        *argv, "--data", str(text_files / "train.jsonl"), "--out", str(tmp_path / "a")
    )
    assert status != 0 and "is not a text classifier" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli(
        *argv, "--data", "synthetic", "--val-data", "x.jsonl", "--out", str(tmp_path / "b")
    )
    assert status != 0 and "--val-data is for texts" in err


@pytest.mark.slow
def test_the_text_demo_writes_its_report(tmp_path):
    status, out, err = run_cli(
        "demo", "--text", "--preset", "test", "--out", str(tmp_path), "--no-progress"
    )
    assert status == 0, err
    assert "Open" in out and "B-cos pointing game" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == {"original", "bcosified", "scratch"}
    assert len(metrics["explanations"]) == 1 + 2 * 6  # bcos, six post-hoc methods on two models
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Texts</h2>" in page and "text-decoration: underline" in page


def test_text_demo_mistakes_are_one_line(tmp_path):
    for extra, message in (
        (["--full"], "--full and --cache are for the image demo"),
        (["--preset", "full"], "--text takes --preset default or test, not full"),
    ):
        status, _, err = run_cli("demo", "--text", *extra, "--out", str(tmp_path))
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
