"""explain_text: tokenizing, batching, exactness, per-token HTML, and errors that say what to do."""

from __future__ import annotations

import pytest
import torch
from test_text_convert import converted

import bcosify
from bcosify.data.text import word_tokenizer
from bcosify.errors import ExplanationError, InexactExplanationWarning
from bcosify.explain.text import explain_text, token_html

transformers = pytest.importorskip("transformers")

WORDS = [f"w{i}" for i in range(30)]  # ids 4..33, inside the tiny models' vocabulary of 40


def test_texts_are_explained_token_by_token_exactly():
    tokenizer = word_tokenizer(WORDS)
    model = converted("bert")
    texts = ["w1 w2 w3 w4", "w5", "w6 w7"]
    e = bcosify.explain_text(model, tokenizer, texts, target=[0, 1, 2])
    assert e.tokens[1] == ["[CLS]", "w5", "[SEP]"]
    assert e.contributions.shape == e.input_ids.shape == (3, 6)
    total = e.contributions.sum(1) + sum(e.constants.values())
    torch.testing.assert_close(total, e.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(e.contributions[e.attention_mask == 0], torch.zeros(5))
    pairs = e.token_contributions(1)
    assert [t for t, _ in pairs] == e.tokens[1]
    assert pairs[1][1] == pytest.approx(float(e.contributions[1, 1]))
    # the predicted class by default, one per text
    assert torch.equal(bcosify.explain_text(model, tokenizer, texts).targets, e.logits.argmax(1))


def test_left_padding_and_truncation():
    tokenizer = word_tokenizer(WORDS)
    tokenizer.padding_side = "left"
    model = converted("gpt2")
    e = explain_text(model, tokenizer, ["w1 w2 w3", "w4"], max_length=4)
    # truncation keeps the special tokens: [SEP] still ends the first text
    assert e.tokens == [["[CLS]", "w1", "w2", "[SEP]"], ["[CLS]", "w4", "[SEP]"]]
    assert e.attention_mask[1].tolist() == [0, 1, 1, 1]
    assert e.contributions[1, 0] == 0.0
    assert [t for t, _ in e.token_contributions(1)] == ["[CLS]", "w4", "[SEP]"]


def test_html_highlights_tokens(tmp_path):
    tokenizer = word_tokenizer(WORDS)
    e = explain_text(converted("bert"), tokenizer, ["w1 w2 <b>"], target=0)
    fragment = e.html(class_names=["first", "second", "third"])
    assert "class first" in fragment and "&lt;b&gt;" not in fragment  # <b> is [UNK]
    assert fragment.count("<span title=") == len(e.tokens[0])
    page = e.save_html(tmp_path / "e.html")
    assert page.read_text().startswith("<!doctype html>")
    assert "rgba(214, 39, 40, 1.00)" in token_html(["a", "b"], [2.0, -1.0])  # the largest: full
    assert "rgba(31, 119, 180, 0.50)" in token_html(["a", "b"], [2.0, -1.0])  # negative: blue
    assert "&lt;b&gt;" in token_html(["<b>"], [0.0])  # escaped


def test_mistakes_are_named():
    tokenizer = word_tokenizer(WORDS)
    model = converted("bert")
    with pytest.raises(ExplanationError, match="list of strings"):
        explain_text(model, tokenizer, "w1 w2")
    with pytest.raises(ExplanationError, match="transformers tokenizer"):
        explain_text(model, object(), ["w1"])
    with pytest.raises(ExplanationError, match="targets must be class indices"):
        explain_text(model, tokenizer, ["w1"], target=7)
    original = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=40,
        )
    )
    with pytest.raises(ExplanationError, match="marked no explained input"):
        explain_text(original, tokenizer, ["w1"])


def test_an_inexact_model_is_not_silent(monkeypatch):
    tokenizer = word_tokenizer(WORDS)
    model = converted("bert")
    layer = model.network.bert.encoder.layer[0].intermediate.intermediate_act_fn
    # a gate that explanation mode does not detach: not dynamic linear, so not exact
    monkeypatch.setattr(layer, "forward", lambda x: x * torch.sigmoid(x))
    with pytest.warns(InexactExplanationWarning):
        explain_text(model, tokenizer, ["w1 w2 w3"], target=0)
    with pytest.raises(ExplanationError, match="examples are inexact"):
        explain_text(model, tokenizer, ["w1 w2 w3"], target=0, check="raise")
