"""Modern architectures (gated MLPs, rotary attention, GRN, SigLIP) and the families' claims.

Every claim of :func:`bcosify.convert.supported` is tested: each "exact" architecture is in the
parametrisation of a conversion test (equivalence at B = 1 with biases, completeness with the
defaults, no bias on the explained path), each "unsupported" one is refused with a
ConversionError, and the docs' converting page shows the table the claims make.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from nets import keep_signal_alive
from test_convert import TIMM, TORCHVISION
from test_convert_vit import SPECS as VITS
from test_convert_vit import randomise
from test_text_convert import CONFIGS as TEXT_CONFIGS
from test_text_convert import tiny_bart
from torch import nn

import bcosify
from bcosify.convert import convert_clip, supported
from bcosify.convert.families import supported_markdown
from bcosify.errors import ConversionError
from bcosify.evaluate import zero_shot_evaluation
from bcosify.models import create
from bcosify.nn import DetachedFactor

CONVERTING_PAGE = Path(__file__).parent.parent / "docs" / "converting.md"


def architectures_under_test() -> set[tuple[str, str]]:
    """(family, architecture) of every conversion test's parametrisation."""
    found = {("torchvision", arch) for arch in TORCHVISION} | {("timm", a) for a in TIMM}
    for source, kwargs, _, _ in VITS.values():
        family, _, arch = source.partition(":")
        found.add((family, arch + (" (avg pool)" if kwargs.get("global_pool") == "avg" else "")))
    from test_clip import HF_CLIP, OPEN_CLIP  # (skips without open_clip)

    for source, _, _ in OPEN_CLIP.values():  # dual models: their image towers are converted
        family, _, arch = source.partition(":")
        found.add((family, f"{arch} (image tower)"))
    for dual, vision in (HF_CLIP, SIGLIP):
        found |= {("transformers", f"{dual} (image tower)"), ("transformers", vision)}
    found |= {("transformers", name) for name, _ in TEXT_CONFIGS.values()}  # test_text_convert
    return found


def test_every_exact_claim_is_tested_and_every_test_is_claimed():
    claims = {(s.family, s.architecture) for s in supported() if s.status.startswith("exact")}
    assert claims == architectures_under_test()


UNSUPPORTED = {
    ("torchvision", "swin_v2_t"): lambda: create("torchvision:swin_v2_t", num_classes=3),
    ("transformers", "BartForSequenceClassification"): tiny_bart,
}


@pytest.mark.parametrize(
    "claim",
    [s for s in supported() if s.status == "unsupported"],
    ids=lambda s: f"{s.family}:{s.architecture}",
)
def test_unsupported_claims_are_refused(claim):
    with pytest.raises(ConversionError):
        bcosify.convert(UNSUPPORTED[(claim.family, claim.architecture)]())


def test_the_docs_show_the_supported_table():
    text = CONVERTING_PAGE.read_text()
    found = re.search(r"<!-- supported:start -->\n(.*?)\n<!-- supported:end -->", text, re.S)
    assert found, "docs/converting.md lacks the <!-- supported:start/end --> markers"
    assert found.group(1).strip() == supported_markdown(), (
        "docs/converting.md's table is stale: regenerate it with "
        "`.venv/bin/python -m bcosify.convert.families docs/converting.md`"
    )


class GatedNet(nn.Module):
    """Gated MLPs written by hand: GEGLU with a functional gate, SwiGLU with a module gate,
    a sigmoid gate from a projection; ``ungated`` adds a product of two signals that is not
    a gate."""

    def __init__(self, ungated: bool = False) -> None:
        super().__init__()
        self.ungated = ungated
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.up = nn.Linear(8, 32)
        self.value, self.gate, self.act = nn.Linear(8, 16), nn.Linear(8, 16), nn.SiLU()
        self.down = nn.Linear(16, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        a, b = self.up(tokens).chunk(2, dim=-1)
        tokens = tokens + self.down(a * F.gelu(b))  # GEGLU
        tokens = tokens + self.down(self.act(self.gate(tokens)) * self.value(tokens))  # SwiGLU
        tokens = tokens * torch.sigmoid(self.norm(tokens))  # a sigmoid gate
        if self.ungated:
            tokens = tokens * tokens
        return self.head(tokens.mean(1))


def test_gated_products_detach_their_gate_and_stay_exact():
    torch.manual_seed(0)
    original = randomise(GatedNet())
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.25,) * 3}
    x = torch.rand(3, 3, 16, 16)
    mean, std = 0.5, 0.25
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **stats)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original((x - mean) / std))
    model, report = bcosify.convert(original, **stats)
    gates = [m for m in model.network.modules() if isinstance(m, DetachedFactor)]
    assert len(gates) == 3, str(report)
    assert isinstance(model.network.act, nn.SiLU)  # the gate's activation keeps its function
    assert isinstance(model.network.gate, bcosify.nn.BcosLinear)  # both projections B-cos
    assert isinstance(model.network.value, bcosify.nn.BcosLinear)
    assert sum("gated product" in note for note in report.notes) == 3
    e = bcosify.explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    with pytest.raises(ConversionError, match=r"multiplies input-dependent tensors \(mul\)"):
        bcosify.convert(GatedNet(ungated=True), **stats)


SIGLIP = ("SiglipModel", "SiglipVisionModel")
"""The transformers classes test_siglip_towers_are_equivalent_explained_and_zero_shot converts:
a dual model (its image tower) and its vision model."""


def tiny_siglip(transformers, vocab_size: int = 60):
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
    tower["num_attention_heads"] = 2
    config = transformers.SiglipConfig(
        text_config={**tower, "vocab_size": vocab_size, "max_position_embeddings": 12},
        vision_config={**tower, "image_size": 16, "patch_size": 4},
    )
    torch.manual_seed(0)
    return randomise(transformers.SiglipModel(config))


def test_siglip_towers_are_equivalent_explained_and_zero_shot(tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_clip import character_tokenizer

    tokenizer, vocab = character_tokenizer(tmp_path)
    model = tiny_siglip(transformers, len(vocab))
    assert (type(model).__name__, type(model.vision_model).__name__) == SIGLIP
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3}
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.get_image_features(pixel_values=(x - 0.5) / 0.5).pooler_output
        same, report = bcosify.convert(model, b=1.0, keep_bias=True, **stats)
        torch.testing.assert_close(same(x), reference, rtol=1e-4, atol=1e-5)
        vision, _ = bcosify.convert(model.vision_model, b=1.0, keep_bias=True, **stats)
        torch.testing.assert_close(vision(x), reference, rtol=1e-4, atol=1e-5)
    assert "attention-pooling head" in str(report)
    converted, _ = bcosify.convert(model, **stats)
    e = bcosify.explain(keep_signal_alive(converted, x), x, target=lambda out: out[:, 0])
    assert "network.vision_model.embeddings.position_embedding.weight" in e.constants
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert not [n for n, _ in converted.named_parameters() if n.endswith("bias")]
    # as a CLIP: the text tower kept, text-prompted explanations and zero-shot
    pair, _ = convert_clip(model, tokenizer=tokenizer, **stats)
    text = pair.encode_text(["a red circle", "a blue square"])
    assert text.shape == (2, 16)
    keep_signal_alive(pair.visual, x)
    e = bcosify.explain(pair, x, target=text[0])
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1e-3)).all(), e.residual
    data = torch.utils.data.TensorDataset(x, torch.tensor([0, 1]))
    result = zero_shot_evaluation(pair, data, class_names=["circle", "square"])
    assert result.num_examples == 2 and set(result.teacher) == {"top1", "top5"}
