"""Building blocks the coverage sweep found refused (timm's and generic ones), in small
networks: each converts exactly (equivalence at B = 1 with biases, completeness with the
defaults on a live signal, no bias left on the explained path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import assert_signal, keep_signal_alive
from test_convert import check_conversion, randomise_statistics
from torch import nn

import bcosify
from bcosify.nn import BcosConv2d, BcosSquaredReLU

timm = pytest.importorskip("timm")


def head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5)]


def vgg_head() -> nn.Module:
    # VGG's ConvMlp pools up to its kernel size on small inputs: a branch on the shape
    from timm.models.vgg import ConvMlp

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvMlp(8, 16, kernel_size=7), *head(16))


def standardised_convolutions() -> nn.Module:
    # NF-Net and BiT stems: the weight is computed from parameters on every call
    layers = timm.layers
    return nn.Sequential(
        layers.ScaledStdConv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        layers.StdConv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        *head(8),
    )


def metaformer_blocks() -> nn.Module:
    # norms that subclass torch.nn's and call the same function; StarReLU; timm's Linear
    from timm.models import metaformer

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        metaformer.GroupNorm1NoBias(8),
        timm.layers.GroupNorm(num_groups=2, num_channels=8),
        metaformer.LayerNorm2dNoBias(8),
        metaformer.StarReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        timm.layers.Linear(8, 5),
    )


def dropout_before_stem() -> nn.Module:
    # EfficientViT: the image goes through a dropout before the first convolution
    return nn.Sequential(nn.Dropout(0.1), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), *head(8))


def fused_layer_norms() -> nn.Module:
    # ViTamin's stem: timm's LayerNormAct2d (a channel layer norm, dropout, activation)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        timm.layers.LayerNormAct2d(8, act_layer=nn.GELU),
        nn.Conv2d(8, 8, 3, padding=1),
        *head(8)[:2],
        timm.layers.LayerNormAct(8, act_layer=nn.ReLU),
        nn.Linear(8, 5),
    )


def tensorflow_same_padding() -> nn.Module:
    # tf_efficientnet, NASNet: 'same' padding from the input's size (odd at stride 2); the
    # hybrid ViTs' ResNet stem: a weight-standardised 'same' convolution and a group norm
    layers = timm.layers
    return nn.Sequential(
        layers.Conv2dSame(3, 8, 3, stride=2),
        nn.ReLU(),
        layers.StdConv2dSame(8, 8, 3, stride=2, padding="SAME"),
        layers.GroupNormAct(8, num_groups=2),
        *head(8),
    )


def transposed_convolution() -> nn.Module:
    # LowFormer's attention upsamples with a transposed convolution: a plain linear map
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 8, 2, stride=2),
        *head(8),
    )


class GrownList(nn.Module):
    """VoVNet's blocks: the features of each layer appended to a list the block was passed."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1) for _ in range(2)])

    def forward(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
            features.append(x)
        return torch.cat(features, dim=1)


class FoldedTokens(nn.Module):
    """VOLO: values gathered into windows (unfold) and summed back (fold); the class token is
    the tokens' maximum (``x.max(1)[0]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grown = GrownList()
        self.mix = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = self.mix(self.grown(x, [x]))
        size = x.shape[-2:]
        windows = F.unfold(x, 3, padding=1)
        x = F.fold(windows, size, 3, padding=1)
        return self.head(x.flatten(2).max(2)[0])


class PaddedByKernel(nn.Module):
    """Pads by its convolution's kernel size (DaVit), resamples (CoaT, EfficientFormer V2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.conv.kernel_size[0]  # read through the B = 1 wrapper that keeps the bias
        x = self.conv(F.pad(x, (k // 2,) * 4))
        return F.interpolate(self.up(x), scale_factor=0.5, mode="bilinear")


def padding_and_resampling() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), PaddedByKernel(), *head(8))


class ExplicitAttention(nn.Module):
    """Attention written out (LeViT, EfficientFormer, CaiT): ``softmax(q k^T * s + bias)``,
    talking heads mixing the weights, dropout, then ``@ v``; a batch norm over tokens."""

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(heads, tokens, tokens))
        self.talking = nn.Conv2d(heads, heads, 1)
        self.drop = nn.Dropout(0.1)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.bias
        attn = self.drop(self.talking(attn.softmax(dim=-1)))
        x = self.proj((attn @ v).transpose(1, 2).flatten(2))
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 16, stride=16)
        self.attn = ExplicitAttention()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(tokens).mean(1))


def timm_activations() -> nn.Module:
    from timm.layers import activations, activations_me

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        activations.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        activations_me.HardSwishMe(),
        nn.Conv2d(8, 8, 3, padding=1),
        activations.Swish(),
        *head(8),
    )


def multi_branch_stem() -> nn.Module:
    # FastViT, MobileOne: the image goes into several convolution branches that are summed
    from timm.models.fastvit import MobileOneBlock

    return nn.Sequential(MobileOneBlock(3, 8, 3, stride=2, num_conv_branches=2), *head(8))


def learnable_affine() -> nn.Module:
    # HGNet-V2: scale * x + bias with learned scalars
    from timm.models.hgnet import LearnableAffineBlock

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), LearnableAffineBlock(0.7, 0.3), nn.ReLU(), *head(8)
    )


class CosineAttention(nn.Module):
    """Swin V2's cosine attention: normalised queries and keys, an nn.Softmax module."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return self.proj(self.softmax(10 * attn) @ v)


class PaddedPooledTokens(nn.Module):
    """A zero pad before the stem, TensorFlow-'same' max pooling (NASNet), cosine attention,
    a 1-d average pool over tokens (Next-ViT) and normalised features before the head."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.pool2d_same import MaxPool2dSame

        self.pad = nn.ZeroPad2d(1)
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.pool = MaxPool2dSame(3, stride=2)
        self.attn = CosineAttention()
        self.reduce = nn.AvgPool1d(2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.pool(self.stem(self.pad(x))).flatten(2).transpose(1, 2)
        tokens = self.reduce(self.attn(tokens).transpose(1, 2))
        return self.head(F.normalize(tokens.mean(-1), dim=1))


NETWORKS = {
    "padded_pooled_tokens": PaddedPooledTokens,
    "multi_branch_stem": multi_branch_stem,
    "learnable_affine": learnable_affine,
    "padding_and_resampling": padding_and_resampling,
    "explicit_attention": Tokens,
    "timm_activations": timm_activations,
    "vgg_head": vgg_head,
    "standardised_convolutions": standardised_convolutions,
    "metaformer_blocks": metaformer_blocks,
    "dropout_before_stem": dropout_before_stem,
    "fused_layer_norms": fused_layer_norms,
    "tensorflow_same_padding": tensorflow_same_padding,
    "transposed_convolution": transposed_convolution,
    "folded_tokens": FoldedTokens,
}


@pytest.mark.parametrize("name", NETWORKS)
def test_timm_blocks_convert_exactly(name):
    torch.manual_seed(0)
    network = NETWORKS[name]()
    with torch.no_grad():  # StarReLU's scale and bias start at 1 and 0: make them matter
        for module in network.modules():
            if type(module).__name__ == "StarReLU":
                module.scale.fill_(0.7)
                module.bias.fill_(0.3)
    # the attention's position bias and weight mixing compute its (detached) weights
    gate = (
        ("network.attn.bias", "network.attn.talking.bias") if name == "explicit_attention" else ()
    )
    check_conversion(randomise_statistics(network), off_path=gate)


def test_standardised_convolutions_become_plain_b_cos_convolutions():
    model, report = bcosify.convert(
        standardised_convolutions().eval(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3
    )
    assert isinstance(model.network[2], BcosConv2d)
    assert "weight-standardised" in str(report)


def test_star_relu_keeps_its_bias_only_with_keep_bias():
    network = metaformer_blocks().eval()
    options = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3}
    default, _ = bcosify.convert(network, **options)
    kept, _ = bcosify.convert(network, b=1.0, keep_bias=True, **options)
    assert isinstance(default.network[4], BcosSquaredReLU)
    assert isinstance(kept.network[4].layer, BcosSquaredReLU)
    assert "network.4.bias" in dict(kept.named_parameters())


def test_explicit_attention_weights_are_detached_and_keep_their_function():
    model, report = bcosify.convert(Tokens().eval(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    attention = model.network.attn
    # the mixing of the weights computes the gate: not on the explained path, not converted
    assert type(attention.talking) is nn.Conv2d
    assert isinstance(attention.qkv, bcosify.nn.BcosLinear)
    assert "gated product" in str(report)


class FourierPositions(nn.Module):
    """A positional encoding computed from the feature map's size (XCiT, EdgeNeXt)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2, dim, 1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        return self.proj(torch.stack([ys / height, xs / width])[None].float())


class ComputedConstants(nn.Module):
    """Constants computed from parameters and the input's size: a module's output, and an
    interpolated table plus a tiled window table (SAM2's Hiera); patches cut by nn.Unfold
    (TNT)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.positions = FourierPositions()
        self.table = nn.Parameter(torch.randn(1, 8, 3, 3))
        self.window = nn.Parameter(torch.randn(1, 8, 2, 2))
        self.unfold = nn.Unfold(2, stride=2)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        height, width = x.shape[2], x.shape[3]
        x = x + self.positions(height, width)
        table = F.interpolate(self.table, size=(height, width), mode="bicubic")
        x = x + (table + self.window.tile((height // 2, width // 2)))
        return self.head(self.unfold(x).mean(-1))


def test_constants_computed_from_parameters_and_sizes_are_named():
    torch.manual_seed(0)
    original = ComputedConstants().eval()
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3}
    x = torch.rand(3, 3, 32, 32)
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **stats)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original((x - 0.5) / 0.5))
    model, _ = bcosify.convert(original, **stats)
    e = bcosify.explain(keep_signal_alive(model, x), x)
    assert set(e.constants) == {
        "network.positions",
        "network.table+window",  # a sum of two tables, named together
        "logit_bias.bias",
    }, list(e.constants)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual


class Floor(nn.Module):
    """``x.max(floor)``: a constant wherever the floor is the larger, so no selection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.floor = nn.Parameter(torch.zeros(1, 8, 1, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).max(self.floor).mean((2, 3)))


def test_the_larger_of_the_signal_and_a_constant_stays_refused():
    with pytest.raises(bcosify.ConversionError, match="calls max"):
        bcosify.convert(Floor(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)


class ClassAttention(nn.Module):
    """CaiT's class-attention block: the class token it is passed, put before the patches."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, x_cls: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([x_cls, x], dim=1)
        return x_cls + self.mix(tokens).mean(1, keepdim=True)


class ClassTokenPassed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 16, stride=16)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = nn.ModuleList([ClassAttention(), ClassAttention()])
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.blocks:  # the first block gets the constant, the second the signal
            cls = block(tokens, cls)
        return self.head(cls[:, 0])


def test_a_constant_passed_as_an_argument_is_a_named_constant_term():
    torch.manual_seed(0)
    original = ClassTokenPassed().eval()
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.25,) * 3}
    x = torch.rand(2, 3, 32, 32)
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **stats)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original((x - 0.5) / 0.25))
    model, report = bcosify.convert(original, **stats)
    assert any(c.startswith("network.blocks.0.x_cls:") for c in report.constants), report.constants
    e = bcosify.explain(keep_signal_alive(model, x), x)
    signal = assert_signal(e)
    assert (e.residual.abs() <= 1e-5 * signal).all(), e.residual
    assert e.constants["network.blocks.0.x_cls"].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_in_another_floating_type_stays_in_it(dtype):
    # norms were rebuilt in the default type: a float64 or bfloat16 ViT mixed types and failed
    torch.manual_seed(0)
    original = timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32).eval()
    original = randomise_statistics(original).to(dtype)
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.25,) * 3}
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **stats)
    assert {p.dtype for p in same.parameters()} == {dtype}
    x = torch.rand(2, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        expected = original((x - 0.5) / 0.25)
        tolerance = 1e-10 if dtype == torch.float64 else 0.1
        torch.testing.assert_close(same(x), expected, rtol=0, atol=tolerance * expected.abs().max())


class PixelEmbed(nn.Module):
    """TNT's pixel embedding: the batch reshaped to one row per patch, a position added."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        patches = self.proj(x).unflatten(2, (2, -1)).transpose(1, 2).flatten(0, 1)
        return patches + position  # (batch x 2 halves, ...)


class PixelTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pixel_embed = PixelEmbed()
        self.position = nn.Parameter(torch.randn(1, 4, 8, 16))
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.pixel_embed(x, self.position)
        return self.head(tokens.unflatten(0, (x.shape[0], 2)).mean((1, 3, 4)))


def test_a_constant_on_a_reshaped_batch_is_a_clear_error_when_explaining():
    stats = {"input_mean": (0.5,) * 3, "input_std": (0.25,) * 3}
    model, _ = bcosify.convert(PixelTokens().eval(), **stats)
    with pytest.raises(bcosify.ExplanationError, match="reshapes its batch"):
        bcosify.explain(model, torch.rand(2, 3, 16, 16))


class RelativeTable(nn.Module):
    """SAM's relative positions: ``einsum`` of the signal with a table (linear in it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.table = nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        tokens = tokens + torch.einsum("bnc,cd->bnd", tokens, self.table)
        return self.head(tokens.mean(1))


def test_einsum_with_one_signal_operand_is_linear():
    check_conversion(RelativeTable().eval())
