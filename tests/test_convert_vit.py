"""bcosify.convert on vision transformers: torchvision and timm ViTs, DeiT, registers, Swin."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F
from nets import assert_same_function, assert_signal, keep_signal_alive
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

import bcosify
from bcosify import ConversionError, explain
from bcosify.convert import ConversionOptions, RuleContext, default_rules
from bcosify.models import create
from bcosify.nn import (
    BcosLinear,
    BcosMultiheadAttention,
    BcosWindowAttention,
    DynamicAttention,
    PooledLayerNorm,
    explanation_mode,
)

# id: (source, architecture arguments, image size, constants besides the logit bias)
ARCHITECTURES = {
    "torchvision_vit_b_16": (
        "torchvision:vit_b_16",
        {"image_size": 32},
        32,
        {"class_token", "encoder.pos_embedding"},
    ),
    "timm_vit_tiny": (
        "timm:vit_tiny_patch16_224",
        {"img_size": 32},
        32,
        {"cls_token", "pos_embed"},
    ),
    "timm_deit_tiny": (
        "timm:deit_tiny_patch16_224",
        {"img_size": 32},
        32,
        {"cls_token", "pos_embed"},
    ),
    "timm_deit_tiny_distilled": (
        "timm:deit_tiny_distilled_patch16_224",
        {"img_size": 32},
        32,
        {"cls_token", "dist_token", "pos_embed"},
    ),
    "timm_vit_small_avgpool": (
        "timm:vit_small_patch16_224",
        {"img_size": 32, "global_pool": "avg"},
        32,
        {"cls_token", "pos_embed"},
    ),
    "timm_vit_small_reg4_dinov2": (
        "timm:vit_small_patch14_reg4_dinov2",
        {"img_size": 28},
        28,
        {"cls_token", "reg_token", "pos_embed"},
    ),
    # SwiGLU MLPs, rotary embeddings inside the attention, q/v biases assembled in F.linear
    "timm_eva02_tiny": (
        "timm:eva02_tiny_patch14_224",
        {"img_size": 28},
        28,
        {"cls_token", "pos_embed"},
    ),
    "timm_vit_rope": (
        "timm:vit_base_patch16_rope_224",
        {"img_size": 32, "depth": 2},
        32,
        {"cls_token"},
    ),
}
# slower: tested with -m slow (64 x 64 images, so that windows of 7 get shifted)
SLOW_ARCHITECTURES = {"torchvision_swin_t": ("torchvision:swin_t", {}, 64, set())}
SPECS = {**ARCHITECTURES, **SLOW_ARCHITECTURES}


def needs(source: str) -> None:
    if source.startswith("timm:"):
        pytest.importorskip("timm")


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for everything a fresh transformer initialises to (near) constants.

    Biases, norm scales, layer scales, tokens, positional embeddings, position-bias tables and
    zero-initialised heads, so that a conversion that dropped or misplaced any of them shows.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.2, 0.2, generator=generator)
            elif parameter.ndim == 1:  # norm weights, layer scales
                parameter.uniform_(0.5, 1.5, generator=generator)
            elif "token" in name or "pos_emb" in name or "relative_position" in name:
                parameter.normal_(0.0, 0.5, generator=generator)
            elif "head" in name:
                parameter.normal_(0.0, 0.05, generator=generator)
    return model.eval()


@functools.cache
def original(arch: str) -> nn.Module:
    source, kwargs, _, _ = SPECS[arch]
    with torch.random.fork_rng():  # the same weights whichever tests ran before
        torch.manual_seed(0)
        return randomise(create(source, num_classes=10, **kwargs))


@functools.cache
def converted(arch: str) -> bcosify.BcosModel:
    """The default conversion, shared by the tests (keep_signal_alive rescales it in place)."""
    model, _ = bcosify.convert(original(arch))
    return model


def images(arch: str, n: int = 2) -> torch.Tensor:
    size = SPECS[arch][2]
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def check_equivalence(arch: str) -> None:
    """B = 1 with biases kept reproduces the original logits, for both input encodings."""
    model = original(arch)
    x = images(arch)
    info = model.bcosify_source
    mean = torch.tensor(info.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(info.input_std).view(1, -1, 1, 1)
    with torch.no_grad():
        reference = model((x - mean) / std)
        assert reference.abs().max() > 1e-2  # a zero head would make the check vacuous
        for encoding in ("fold", "paper"):
            same, _ = bcosify.convert(model, b=1.0, keep_bias=True, encoding=encoding)
            error = (same(x) - reference).abs().max()
            assert error <= 1e-4 * reference.abs().max(), (encoding, float(error))


def check_completeness(arch: str, constants: set[str]) -> None:
    """Contributions plus the named constants equal the logit; the input carries real signal."""
    x = images(arch)
    model = keep_signal_alive(converted(arch), x)
    e = explain(model, x)
    expected = {f"network.{name}" for name in constants} | {"logit_bias.bias"}
    assert set(e.constants) == expected
    # the input carries real signal: the contributions have not underflowed
    mass = e.contributions.abs().flatten(1).sum(1)
    assert (mass > 0.1).all(), mass
    for name in constants:
        assert (e.constants[f"network.{name}"].abs() > 1e-6).all(), name
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert e.contribution_map.shape == (x.shape[0], *x.shape[2:])  # input resolution
    biases = [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert biases == []


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_equivalence_with_b1_and_biases(arch):
    needs(ARCHITECTURES[arch][0])
    check_equivalence(arch)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_completeness_with_named_constants(arch):
    needs(ARCHITECTURES[arch][0])
    check_completeness(arch, ARCHITECTURES[arch][3])


@pytest.mark.parametrize("arch", ["timm_deit_tiny_distilled", "torchvision_vit_b_16"])
def test_batch_equals_per_example(arch):
    needs(ARCHITECTURES[arch][0])
    x = images(arch, 3)
    model = keep_signal_alive(converted(arch), x)
    batch = explain(model, x, target=[1, 4, 7])
    for i, target in enumerate([1, 4, 7]):
        single = explain(model, x[i : i + 1], target=target)
        scale = batch.contributions[i].abs().max()
        torch.testing.assert_close(
            single.contributions[0], batch.contributions[i], rtol=1e-4, atol=1e-5 * scale
        )
        for name, value in batch.constants.items():
            torch.testing.assert_close(single.constants[name][0], value[i], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_swin_t_converts():
    check_equivalence("torchvision_swin_t")
    check_completeness("torchvision_swin_t", set())
    model = converted("torchvision_swin_t")
    assert any(isinstance(m, BcosWindowAttention) for m in model.modules())


def test_report_names_attention_constants_and_head():
    pytest.importorskip("timm")
    model, report = bcosify.convert(original("timm_vit_small_avgpool"))
    text = str(report)
    assert "network.pos_embed: added to the signal" in text
    assert "network.cls_token: concatenated with the signal" in text
    assert "12 x Linear -> Linear" in text  # the qkv projections stay plain, bias-free
    assert "DynamicAttention: queries and keys detached" in text
    assert "applied to every token before the token average" in text
    assert isinstance(model.network.fc_norm, PooledLayerNorm)
    qkv = model.network.get_submodule("blocks.0.attn.qkv")
    assert type(qkv) is nn.Linear and qkv.bias is None


def test_qkv_projection_option_round_trips(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="qkv_projection must be one of"):
        ConversionOptions((0.5,), (0.5,), qkv_projection="none")
    x = images("timm_vit_small_avgpool")
    model, report = bcosify.convert(original("timm_vit_small_avgpool"), qkv_projection="bcos")
    keep_signal_alive(model, x)
    assert isinstance(model.network.get_submodule("blocks.0.attn.qkv"), BcosLinear)
    assert "Linear -> Linear" not in str(report)
    directory = model.save_pretrained(tmp_path / "vit")
    assert json.loads((directory / "config.json").read_text())["options"]["qkv_projection"] == (
        "bcos"
    )
    loaded = bcosify.load(directory)
    assert loaded.config.options.qkv_projection == "bcos"
    assert isinstance(loaded.network.get_submodule("blocks.0.attn.qkv"), BcosLinear)
    assert_same_function(model, x, loaded)


def small_torchvision_vit() -> nn.Module:
    return randomise(
        VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    )


@pytest.mark.parametrize(
    "arch", ["small_user_built", pytest.param("torchvision_vit_b_16", marks=pytest.mark.slow)]
)
def test_torchvision_vit_save_load_round_trip(arch, tmp_path):
    if arch == "small_user_built":  # nn.MultiheadAttention inside torchvision's EncoderBlock
        model, _ = bcosify.convert(
            small_torchvision_vit(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3
        )
        rebuild = {"model": small_torchvision_vit()}
    else:
        model, rebuild = converted(arch), {}
    attention = model.network.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert isinstance(attention, BcosMultiheadAttention)
    x = images("torchvision_vit_b_16")
    keep_signal_alive(model, x)
    loaded = bcosify.load(model.save_pretrained(tmp_path / "vit"), **rebuild)
    assert_same_function(model, x, loaded)
    e, f = explain(model, x), explain(loaded, x)
    assert_signal(e)
    torch.testing.assert_close(e.contributions, f.contributions)
    assert e.constants.keys() == f.constants.keys()


def test_timm_attention_without_fused_path_converts():
    pytest.importorskip("timm")
    model = create("timm:vit_tiny_patch16_224", img_size=32, num_classes=10, depth=2)
    model = randomise(model)
    for block in model.blocks:
        block.attn.fused_attn = False
    check = bcosify.convert(model, b=1.0, keep_bias=True)
    assert any("switched to F.scaled_dot_product_attention" in n for n in check.report.notes)
    assert model.blocks[0].attn.fused_attn is False  # the original is untouched
    x = images("timm_vit_tiny")
    mean = torch.tensor(model.bcosify_source.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(model.bcosify_source.input_std).view(1, -1, 1, 1)
    with torch.no_grad():
        reference = model((x - mean) / std)
        error = (check.model(x) - reference).abs().max()
    assert error <= 1e-4 * reference.abs().max()


class TinyViT(nn.Module):
    """A user-written ViT: patchify conv, own tokens and embedding, separate q/k/v, functional
    attention and GELU, a class-token head."""

    def __init__(self, dim: int = 16, heads: int = 2, num_classes: int = 5) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim))
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj, self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, 32), nn.Linear(32, dim)
        self.head = nn.Linear(dim, num_classes)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        h = self.norm1(x)
        a = F.scaled_dot_product_attention(
            self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
        )
        x = x + self.proj(a.transpose(1, 2).flatten(2))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x)[:, 0])


def test_user_vit_with_functional_attention():
    torch.manual_seed(0)
    original_model = randomise(TinyViT())
    stats = {"input_mean": (0.5, 0.4, 0.3), "input_std": (0.2, 0.3, 0.25)}
    x = torch.rand(3, 3, 16, 16)
    mean = torch.tensor(stats["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["input_std"]).view(1, -1, 1, 1)
    same, report = bcosify.convert(original_model, b=1.0, keep_bias=True, **stats)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original_model((x - mean) / std))
    assert any("projections ['k', 'q', 'v']" in note for note in report.notes)
    model, report = bcosify.convert(original_model, **stats)
    assert [type(getattr(model.network, n)) for n in "qkv"] == [nn.Linear] * 3
    assert any(isinstance(m, DynamicAttention) for m in model.modules())
    e = explain(keep_signal_alive(model, x), x)
    assert set(e.constants) == {"network.cls", "network.pos", "logit_bias.bias"}
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual


class ExplicitAttention(nn.Module):
    """Attention written out by hand: softmax(q k^T) v, optionally with a position bias table."""

    def __init__(self, dim: int = 8, tokens: int = 4, relative_bias: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias_table = nn.Parameter(torch.zeros(tokens, tokens)) if relative_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1)
        if self.bias_table is not None:
            scores = scores + self.bias_table
        return scores.softmax(dim=-1) @ v


class AttentionNet(nn.Module):
    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.attention = attention
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).permute(0, 2, 3, 1)  # (batch, height, width, channels)
        return self.head(self.attention(tokens).mean((1, 2)))


@pytest.mark.parametrize("relative_bias", [False, True], ids=["softmax", "position_bias"])
def test_explicit_softmax_attention_is_exact(relative_bias):
    # softmax(q k^T [+ bias]) @ v written out: the weights are detached when explaining
    torch.manual_seed(0)
    attention = ExplicitAttention(relative_bias=relative_bias)
    if relative_bias:
        nn.init.normal_(attention.bias_table)
    original = AttentionNet(attention).eval()
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3}
    x = torch.rand(3, 3, 16, 16)  # 4 x 4 tokens, attending along the rows
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **stats)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original((x - 0.5) / 0.5))
    model, report = bcosify.convert(original, **stats)
    assert "gated product" in str(report)
    e = explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (  # Swin V2: cosine attention with a position bias computed by an MLP
            ShiftedWindowAttentionV2(8, [2, 2], [1, 1], num_heads=2),
            "'attention' (ShiftedWindowAttentionV2): calls shifted_window_attention, which has "
            "no dynamic-linear form",
        ),
    ],
    ids=["swin_v2_window_attention"],
)
def test_unrecognised_attention_is_named(attention, message):
    with pytest.raises(ConversionError) as info:
        bcosify.convert(AttentionNet(attention), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    assert message in str(info.value)


def test_unsupported_multihead_attention_options_are_named():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 4, stride=4)
            self.attention = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.stem(x).flatten(2).transpose(1, 2)
            return self.attention(t, t, t, need_weights=False)[0].mean(1)

    with pytest.raises(ConversionError, match=r"'attention' \(MultiheadAttention\): learned key"):
        bcosify.convert(Net(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)


def test_a_bias_added_to_the_tokens_is_refused():
    class Net(TinyViT):
        def __init__(self) -> None:
            super().__init__()
            self.offset = nn.Parameter(torch.zeros(16))  # one value per channel: a bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2) + self.offset
            return self.head(x.mean(1))

    with pytest.raises(ConversionError, match="'offset' has one value per channel, a bias"):
        bcosify.convert(Net(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)


def test_multihead_attention_matches_torch_with_masks():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8)  # (length, batch, channels): batch_first=False
    reference = randomise(nn.MultiheadAttention(8, 2, dropout=0.1))
    options = ConversionOptions((0.5,), (0.5,), b=1.0, keep_bias=True)
    table = default_rules()

    def apply(module: nn.Module, path: str) -> nn.Module:
        context = RuleContext(options, path, lambda child, name: apply(child, f"{path}.{name}"))
        return table[type(module)](module, context)

    ours = apply(reference, "attention").eval()
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    for kwargs in ({}, {"attn_mask": causal}, {"key_padding_mask": padding}):
        for need_weights in (False, True):
            expected = reference(x, x, x, need_weights=need_weights, **kwargs)
            got = ours(x, x, x, need_weights=need_weights, **kwargs)
            torch.testing.assert_close(got[0], expected[0])
            assert (got[1] is None) == (expected[1] is None)
            if got[1] is not None:
                torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_is_linear_in_its_input_when_explaining(need_weights):
    """With bias-free projections and q, k detached, sum(x * dy/dx) = y (Euler): linear."""
    torch.manual_seed(0)
    projections = [nn.Linear(8, 8, bias=False) for _ in range(4)]
    attention = BcosMultiheadAttention(*projections, num_heads=2, batch_first=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    weights = torch.randn(2, 5, 8)
    with explanation_mode(attention):
        y = (attention(x, x, x, need_weights=need_weights)[0] * weights).sum()
    (grad,) = torch.autograd.grad(y, x)
    torch.testing.assert_close((x * grad).sum(), y)
    y = (attention(x, x, x, need_weights=need_weights)[0] * weights).sum()  # not explaining
    (grad,) = torch.autograd.grad(y, x)
    assert not torch.allclose((x * grad).sum(), y)


class PatchLinearViT(nn.Module):
    """A ViT whose patch embedding is a Linear on patches cut out by reshapes, three ways."""

    def __init__(self, patchify: str) -> None:
        super().__init__()
        self.patchify = patchify
        self.proj = nn.Linear(3 * 4 * 4, 16)
        self.pos = nn.Parameter(torch.randn(1, 16, 16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.patchify == "unfold":  # patch vectors (row, column, channel)
            tokens = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 4, 5, 1).flatten(3)
            tokens = tokens.flatten(1, 2)
        elif self.patchify == "im2col":  # (channel, row, column)
            tokens = F.unfold(x, 4, stride=4).transpose(1, 2)
        elif self.patchify == "reshape":
            tokens = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 3, 5, 1)
            tokens = tokens.reshape(b, -1, 16 * c)
        else:  # the channel count written into the reshape: no room for [x, 1 - x]
            tokens = x.reshape(b, 3, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5)
            tokens = tokens.reshape(b, -1, 48)
        return self.head(self.norm(self.proj(tokens) + self.pos).mean(1))


@pytest.mark.parametrize("patchify", ["unfold", "im2col", "reshape"])
def test_patch_linear_embedding_is_folded_per_pixel(patchify):
    torch.manual_seed(0)
    original_model = randomise(PatchLinearViT(patchify))
    stats = {"input_mean": (0.5, 0.4, 0.3), "input_std": (0.2, 0.3, 0.25)}
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor(stats["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["input_std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        reference = original_model((x - mean) / std)
        for encoding in ("fold", "paper"):
            same, _ = bcosify.convert(
                original_model, b=1.0, keep_bias=True, encoding=encoding, **stats
            )
            torch.testing.assert_close(same(x), reference)
    assert same.network.proj.layer.weight.shape == (16, 96)  # [x, 1 - x] per pixel
    model, _ = bcosify.convert(original_model, **stats)
    e = explain(keep_signal_alive(model, x), x)
    assert set(e.constants) == {"network.pos", "logit_bias.bias"}
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual


def test_patch_linear_embedding_with_a_fixed_channel_count_is_refused():
    with pytest.raises(ConversionError, match="do not accept the 6-channel encoded input"):
        bcosify.convert(PatchLinearViT("fixed"), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
