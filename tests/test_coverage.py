"""The coverage benchmark, reduced: a fixed sample of families measured as the full sweep
measures them (``make bench-coverage``), and the sweep's time limit and cache."""

from __future__ import annotations

import json

import pytest
from commands import benchmark_script

pytest.importorskip("timm")
pytest.importorskip("transformers")

# (library, family, architecture): each converts exactly (equivalence at B = 1 with biases,
# completeness with the defaults on a live signal), a few seconds each
SAMPLE = [
    ("timm", "resnet", "test_resnet"),
    ("timm", "convnext", "test_convnext"),
    ("timm", "levit", "levit_128s"),  # attention written out, 1-d batch norms
    ("timm", "nfnet", "test_nfnet"),  # weight-standardised convolutions
    ("timm", "fastvit", "fastvit_t8"),  # a multi-branch stem
    ("timm", "metaformer", "poolformerv2_s12"),  # norm subclasses, StarReLU
    ("timm", "pit", "pit_ti_224"),  # the class token passed along with the signal in a tuple
    ("timm", "vision_transformer", "test_vit"),  # branches on the grid size: traced at it
    ("timm", "focalnet", "focalnet_tiny_srf"),  # products of input-dependent tensors
    ("timm", "selecsls", "selecsls42"),  # isinstance(x, list): traced with lists
    ("transformers", "bert", "BertForSequenceClassification"),
    ("transformers", "gpt2", "GPT2ForSequenceClassification"),
    ("transformers", "qwen2", "Qwen2ForSequenceClassification"),  # found by structure
    ("transformers", "electra", "ElectraForSequenceClassification"),  # runs its own code
    ("transformers", "mixtral", "MixtralForSequenceClassification"),  # a look-alike that does too
]


@pytest.fixture(scope="module")
def coverage():
    with benchmark_script("bench_coverage") as module:
        yield module


@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: f"{c[0]}:{c[1]}")
def test_sampled_families_convert_exactly(coverage, case):
    result = coverage.measure(coverage.Case(*case))
    assert result["status"] == "exact", result.get("traceback", result)
    assert result["equivalence"] <= coverage.TOLERANCE
    assert result["residual"] <= coverage.TOLERANCE


def test_a_refused_model_is_reported_with_its_reason(coverage):
    # an encoder-decoder text classifier, which the converter refuses: a failure, counted,
    # with the reason
    result = coverage.measure(
        coverage.Case("transformers", "bart", "BartForSequenceClassification")
    )
    assert result["status"] == "convert"
    assert "encoder-decoder" in result["reason"]
    assert coverage.failure_class(result) != "exact"


def test_a_case_over_its_time_limit_is_recorded_and_cached(coverage, tmp_path, monkeypatch):
    monkeypatch.setattr(coverage, "CACHE", tmp_path)
    case = coverage.Case("timm", "resnet", "resnet10t")
    (result,) = coverage.run_cases([case], coverage.SIZE, timeout=0.5, digest="d")
    assert result["status"] == "timeout" and result["case"] == case.key
    cached = json.loads((tmp_path / "d" / "timm_resnet_resnet10t.json").read_text())
    assert cached == result
    # the sweep reads it back instead of measuring again
    monkeypatch.setattr(coverage, "source_hash", lambda: "d")
    assert coverage.sweep([case], coverage.SIZE, 0.5, fresh=False) == {case.key: result}
