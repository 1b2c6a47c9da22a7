"""Products of two input-dependent tensors, and the code shapes that came with them in timm.

A product ``a(x) * b(x)`` of two dynamic-linear functions of the input is dynamic linear once
one factor is detached when explaining. The converter picks the factor (a divisor, attention
weights, the factor computed through operations that are not dynamic linear, else the left
operand of a matrix product and the right one of an elementwise product), names it in the
report, and leaves the nodes that only compute it off the explained path. Each network here was
refused before; now it must equal the original at B = 1 with biases, and explain completely.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from nets import assert_signal, keep_signal_alive
from torch import nn

import bcosify
from bcosify import ConversionError, explain

STATS = {"input_mean": (0.5, 0.4, 0.3), "input_std": (0.2, 0.25, 0.3)}


def normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(STATS["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(STATS["input_std"]).view(1, -1, 1, 1)
    return (x - mean) / std


class SpatialGate(nn.Module):
    """gMLP's spatial gating unit: ``u * proj(norm(v))``, both factors linear in the input."""

    def __init__(self, dim: int = 8, tokens: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim // 2)
        self.proj = nn.Linear(tokens, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(-1, -2)).transpose(-1, -2)
        return torch.cat([u * v, v], dim=-1)


class NormalisedGate(nn.Module):
    """A factor that is on the explained path too, so rewritten (``F.normalize``) before its
    product is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = F.normalize(v, dim=-1)
        return torch.cat([u * v, v], dim=-1)


class GlobalQuery(nn.Module):
    """SwiftFormer's additive attention: a global query (a sum over the tokens) times each
    token's key."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.weight = nn.Parameter(torch.randn(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = (x * self.weight).sum(1, keepdim=True)
        return query * self.key(x)


class RmsNorm(nn.Module):
    """An RMS norm written out (timm's ``rms_norm2d``): a power, a mean, a constant, a root."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class LinearAttention(nn.Module):
    """Attention weights without a softmax, ``(q k^T) v``."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(-2, -1)) @ v


class FactorisedAttention(nn.Module):
    """CoaT's ``q @ (softmax(k)^T v)``: a context of the values, which the queries weight."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return q @ (k.softmax(dim=1).transpose(-2, -1) @ v)


class Scaled(nn.Module):
    """A division by an input-dependent tensor (a norm over the tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.abs().mean(1, keepdim=True) + 1.0)


class InPlaceBias(nn.Module):
    """MViT's attention: a position bias added in place to part of ``q k^T``, then softmax."""

    def __init__(self, dim: int = 8, tokens: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = nn.Parameter(torch.randn(tokens - 1, tokens - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = q @ k.transpose(-2, -1)
        attn[:, 1:, 1:] = attn[:, 1:, 1:] + self.bias
        return attn.softmax(dim=-1) @ v


class TokenNet(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.block = block
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)  # (batch, 16 tokens, 8)
        return self.head((tokens + self.block(tokens)).mean(1))


@pytest.mark.parametrize(
    ("block", "detached"),
    [
        (SpatialGate(), "(the right operand)"),
        (NormalisedGate(), "(the right operand)"),
        (GlobalQuery(), "(a sum or mean over some dimension"),
        (RmsNorm(), "factor rsqrt (computed through operations that are not dynamic linear)"),
        (LinearAttention(), "factor matmul (the left operand"),
        (FactorisedAttention(), "(the left operand"),
        (Scaled(), "(the divisor)"),
        (InPlaceBias(), "(the attention weights)"),
    ],
    ids=[
        "gmlp_gate",
        "rewritten_factor",
        "global_query",
        "rms_norm",
        "linear_attention",
        "factorised_attention",
        "divisor",
        "mvit",
    ],
)
def test_a_product_of_two_signals_detaches_one_factor(block, detached):
    torch.manual_seed(0)
    original = TokenNet(block).eval()
    x = torch.rand(3, 3, 16, 16)
    options = {**STATS, "input_size": (16, 16)}  # MViT's in-place write is traced with values
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **options)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original(normalised(x)))
    model, report = bcosify.convert(original, **options)
    assert any(detached in note and "detached when explaining" in note for note in report.notes), (
        report.notes
    )
    e = explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual


def test_a_square_is_not_a_product_of_two_factors():
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    with pytest.raises(ConversionError, match=r"'block' \(Square\): multiplies input-dependent"):
        bcosify.convert(TokenNet(Square()), **STATS)


class PositionConv(nn.Module):
    """CoaT's convolutional position encoding, one module shared by several blocks, called
    with the feature map's size as a tuple; its functional GELU makes its code rewritten."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        feature = x.transpose(1, 2).unflatten(2, size)
        return x + F.gelu(self.proj(feature)).flatten(2).transpose(1, 2)


class SharedBlock(nn.Module):
    def __init__(self, position: PositionConv, dim: int = 8) -> None:
        super().__init__()
        self.position = position
        self.mix = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.position(x, (4, 4)))


class SharedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.position = PositionConv()
        self.blocks = nn.Sequential(SharedBlock(self.position), SharedBlock(self.position))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


def test_a_shared_module_with_a_size_tuple_converts_once_and_pickles():
    torch.manual_seed(0)
    original = SharedNet().eval()
    x = torch.rand(3, 3, 16, 16)
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **STATS)  # biases: Biased
    with torch.no_grad():
        torch.testing.assert_close(same(x), original(normalised(x)))
        again = pickle.loads(pickle.dumps(same))
        torch.testing.assert_close(again(x), same(x), rtol=0, atol=0)
    model, _ = bcosify.convert(original, **STATS)
    assert model.network.blocks[0].position is model.network.blocks[1].position
    e = explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual


class ListBlock(nn.Module):
    """SelecSLS's block: takes a tensor or a list of two, returns a list of two."""

    def __init__(self, dim: int = 8, first: bool = False) -> None:
        super().__init__()
        self.first = first
        self.conv = nn.Conv2d(dim * (1 if first else 2), dim, 3, padding=1)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        if not isinstance(x, list):
            x = [x]
        if self.first:
            out = self.conv(x[0])
            return [out, out]
        return [self.conv(torch.cat([x[0], x[1]], 1)), x[1]]


class ListHead(nn.Module):
    """CoaT's head: several class tokens mixed by a 1-D convolution when given a list."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.aggregate = nn.Conv1d(2, 1, 1)
        self.fc = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, list):
            x = self.aggregate(torch.stack([t.mean((2, 3)) for t in x], dim=1)).squeeze(1)
        else:
            x = x.mean((2, 3))
        return self.fc(x)


class ListNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Sequential(ListBlock(first=True), ListBlock(), ListBlock())
        self.head = ListHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


def test_code_asking_isinstance_list_takes_its_run_time_branch():
    torch.manual_seed(0)
    original = ListNet().eval()
    x = torch.rand(3, 3, 16, 16)
    options = {**STATS, "input_size": (16, 16)}  # the example run says which are lists
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **options)
    with torch.no_grad():
        torch.testing.assert_close(same(x), original(normalised(x)))
    model, report = bcosify.convert(original, **options)
    assert ("head.aggregate", "Conv1d") in [(r.path, r.new) for r in report.replaced]
    assert model.network.head.aggregate.bias is None
    e = explain(keep_signal_alive(model, x), x)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual
