"""The synthetic text task, labelled text files, text explainers and their metrics, training a
text classifier with the loop, and the text benchmark's quick mode."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from nets import assert_signal, keep_signal_alive

import bcosify
from bcosify.data.text import _NEGATIONS, TOPICS, SyntheticTexts, TextFileDataset
from bcosify.errors import DataError, EvaluationError
from bcosify.evaluate import TEXT_EXPLAINER_NAMES, build_text_explainer
from bcosify.evaluate.text import (
    erasure_scores,
    token_pointing_game,
)
from bcosify.explain.text import explain_tokens

transformers = pytest.importorskip("transformers")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_synthetic_evidence_is_the_un_negated_keywords_of_the_label():
    data = SyntheticTexts("test", 50, seed=3)
    assert data.example(7) == SyntheticTexts("test", 50, seed=3).example(7)  # deterministic
    assert data.example(7) != SyntheticTexts("train", 50, seed=3).example(7)  # splits differ
    negated_own = 0
    for i in range(len(data)):
        ex = data.example(i)
        own = TOPICS[data.classes[ex.label]]
        for j, (word, is_evidence) in enumerate(zip(ex.words, ex.evidence, strict=True)):
            after_negation = j > 0 and ex.words[j - 1] in _NEGATIONS
            assert is_evidence == (word in own and not after_negation), (ex.text, word)
            negated_own += word in own and after_negation
        assert any(ex.evidence)
        # the evidence mask marks exactly the evidence words' tokens, padding and specials not
        ids, label = data[i]
        mask = data.evidence_mask(i)
        assert label == ex.label and mask.shape == ids.shape
        words = data.tokenizer.convert_ids_to_tokens(ids[mask].tolist())
        assert words == [w for w, e in zip(ex.words, ex.evidence, strict=True) if e]
    assert negated_own > 0  # the label's own keyword also appears negated: words alone mislead


def test_text_files_are_read_and_mistakes_named(tmp_path):
    tokenizer = SyntheticTexts("train", 1).tokenizer
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\nthe cat,animals\nsome rain,weather\n")
    data = TextFileDataset(csv, tokenizer, max_length=6)
    assert data.classes == ["animals", "weather"] and data.labels == [0, 1]
    assert data[0][0].tolist()[:4] == [2, tokenizer.convert_tokens_to_ids("the"), 4, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not JSON"):
        TextFileDataset(bad, tokenizer)
    missing = tmp_path / "missing.csv"
    missing.write_text("words,label\na,0\nb,1\n")
    with pytest.raises(DataError, match="lacks 'text' or 'label'"):
        TextFileDataset(missing, tokenizer)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DataError, match=r"must end in .jsonl or .csv"):
        TextFileDataset(tmp_path / "x.txt", tokenizer)


def tiny_bert(vocab: int, seed: int = 0) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=4,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def texts():
    data = SyntheticTexts("test", 6, seed=0)
    ids = torch.stack([data[i][0] for i in range(len(data))])
    return data, ids, (ids != 0).long(), torch.tensor([data[i][1] for i in range(len(data))])


def test_every_text_explainer_gives_one_value_per_token(texts):
    data, ids, mask, labels = texts
    original = tiny_bert(data.tokenizer.vocab_size)
    converted, _ = bcosify.convert(original)
    keep_signal_alive(converted, ids)  # converted, its logits are the logit bias alone
    # the post-hoc methods on the original and on the converted model (the benchmark's control)
    runs = [("bcos", converted)] + [
        (name, model) for name in TEXT_EXPLAINER_NAMES[1:] for model in (original, converted)
    ]
    for name, model in runs:
        options = {"lime": {"n_samples": 24}, "integrated_gradients": {"n_steps": 8}}.get(name, {})
        values = build_text_explainer(name, model, **options).attribute(ids, mask, labels)
        assert values.shape == ids.shape and values.dtype == torch.float32, name
        assert torch.isfinite(values).all() and values.abs().sum() > 0, name
        assert not values.requires_grad and all(p.grad is None for p in model.parameters())
        if name != "occlusion":  # zeroing a padding embedding still moves its own row
            assert torch.equal(values[mask == 0], torch.zeros(int((mask == 0).sum()))), name
        assert not any(m.explaining for m in model.modules() if hasattr(m, "explaining"))
    bcos = build_text_explainer("bcos", converted).attribute(ids, mask, labels)
    e = explain_tokens(converted, ids, mask, labels)
    assert_signal(e)
    assert torch.equal(bcos, e.contributions)
    with pytest.raises(EvaluationError, match="needs a B-cos model"):
        build_text_explainer("bcos", original)
    with pytest.raises(EvaluationError, match="unknown text explainer 'shap'"):
        build_text_explainer("shap", original)
    with pytest.raises(EvaluationError, match="has no option"):
        build_text_explainer("saliency", original, n_steps=3)


def test_integrated_gradients_through_the_embedding_hook_is_complete(texts):
    """Its attributions sum to f(embeddings) - f(zero embeddings): the hook differentiates
    the model's own function of its token embedding's output."""
    data, ids, mask, labels = texts
    original = tiny_bert(data.tokenizer.vocab_size)
    values = build_text_explainer("integrated_gradients", original, n_steps=200)
    total = values.attribute(ids, mask, labels).sum(1)
    embedding = original.get_input_embeddings()
    with torch.no_grad():
        full = original(input_ids=ids, attention_mask=mask).logits
        handle = embedding.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        try:
            zero = original(input_ids=ids, attention_mask=mask).logits
        finally:
            handle.remove()
    rows = torch.arange(len(ids))
    expected = (full - zero)[rows, labels]
    torch.testing.assert_close(total, expected, rtol=2e-2, atol=2e-3)


def test_erasure_rewards_the_tokens_the_model_uses():
    class Sevens(torch.nn.Module):  # class 1 scores the token 7s
        def forward(self, ids, mask):
            sevens = ((ids == 7) & mask.bool()).sum(1).float()
            return torch.stack([torch.zeros_like(sevens), sevens], 1)

    ids = torch.tensor([[2, 5, 7, 5, 7, 5, 3], [2, 7, 5, 5, 5, 5, 3]])
    mask = torch.ones_like(ids)
    candidates = (ids != 2) & (ids != 3)
    right, wrong = (ids == 7).float(), (ids == 5).float()
    target = torch.tensor([1, 1])
    kwargs = {"pad_token_id": 0}
    good = erasure_scores(Sevens(), ids, mask, right, target, candidates, **kwargs)
    bad = erasure_scores(Sevens(), ids, mask, wrong, target, candidates, **kwargs)
    assert (good.comprehensiveness > bad.comprehensiveness).all()
    assert (good.sufficiency < bad.sufficiency).all()
    with pytest.raises(EvaluationError, match="fractions must be in"):
        erasure_scores(Sevens(), ids, mask, right, target, candidates, fractions=[0], **kwargs)
    with pytest.raises(EvaluationError, match="at least one candidate"):
        token_pointing_game(right, right.bool(), torch.zeros_like(ids).bool())


def test_text_classifiers_train_with_the_loop(tmp_path):
    from bcosify.models.text import load_hf_text_classifier
    from bcosify.train import get_recipe, train

    data = SyntheticTexts("train", 32, seed=0)
    recipe = {"epochs": 1, "batch_size": 16, "checkpoint_every": 10**6}
    original = train(
        tiny_bert(data.tokenizer.vocab_size),
        data,
        get_recipe("standard", **recipe),
        tmp_path / "original",
        progress=False,
    )
    assert original.finished
    saved = load_hf_text_classifier(tmp_path / "original" / "model")
    assert saved.model.config.id2label == dict(enumerate(data.classes))
    result = train(
        original.model, data, get_recipe("bcosify-lm", **recipe), tmp_path / "lm", progress=False
    )
    assert isinstance(result.model, bcosify.BcosTextModel) and result.finished
    loaded = bcosify.load(tmp_path / "lm" / "model")
    assert loaded.config.class_names == data.classes
    ids = data[0][0][None]
    with torch.no_grad():
        assert torch.equal(loaded(ids), result.model.eval()(ids))
    # after one epoch its logits barely differ from the bias: the weights themselves must match
    trained = result.model.state_dict()
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(value, trained[key]) for key, value in loaded.state_dict().items())


def test_the_text_benchmark_runs_quick(tmp_path, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("bench_text")
        docs = tmp_path / "benchmarks.md"
        assert bench.main(["--quick", "--write", str(docs)]) == 0
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in ("bench_text", "common"):
            sys.modules.pop(name, None)
    text = docs.read_text()
    assert "<!-- bench_text:start -->" in text and "<!-- bench_text:end -->" in text
    for name in TEXT_EXPLAINER_NAMES:
        assert f"| {name} |" in text
    assert "Targets:" in text and "B-cos from scratch" in text
