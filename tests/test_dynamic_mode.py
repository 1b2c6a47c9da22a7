"""DynamicLinearMode: a model's own code, made dynamic linear operation by operation.

Each block below computes something a transformers classifier's code computes (norms written
out, attention with masks, gates, position embeddings, in-place scaling). Under the mode the
output must be exactly the sum of the input's and the named constants' contributions, the
forward value must not change, and the model's parameters must be as they were afterwards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcosify.nn import BcosTokenEmbedding
from bcosify.nn.dynamic_mode import DynamicLinearMode
from bcosify.nn.trace import ExplanationTrace


class Blocks(nn.Module):
    """Token ids in, one score per text out, through the operations the mode must handle."""

    def __init__(self, kind: str, dim: int = 8, vocab: int = 20, length: int = 6) -> None:
        super().__init__()
        self.kind = kind
        self.tokens = BcosTokenEmbedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.norm_weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.norm_bias = nn.Parameter(torch.randn(dim))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.up = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, 1, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids)
        if self.kind == "in_place":
            x *= 3.0  # CTRL scales its embeddings in place
        x = x + self.positions(torch.arange(ids.shape[1]))
        if self.kind == "layer_norm":
            x = F.layer_norm(x, (x.shape[-1],), self.norm_weight, self.norm_bias)
        if self.kind == "rms_norm":  # written out, as Llama's and T5's are
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm_weight
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.kind == "eager_attention":
            causal = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)
            scores = q @ k.transpose(-1, -2) / 8**0.5 + causal
            x = x + torch.softmax(scores, dim=-1) @ v
        else:
            x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if self.kind == "swiglu":
            x = x + F.silu(self.gate(x)) * self.up(x)
        if self.kind == "gelu_tanh":  # GPT-2's "new" GELU, written out
            y = self.up(x)
            x = x + 0.5 * y * (1.0 + torch.tanh(0.79 * (y + 0.044 * torch.pow(y, 3.0))))
        if self.kind == "division":
            x = x / x.norm(dim=-1, keepdim=True)
        return self.head(torch.tanh(x[:, 0])).squeeze(-1)  # a tanh pooler


KINDS = [
    "in_place",
    "layer_norm",
    "rms_norm",
    "eager_attention",
    "sdpa",
    "swiglu",
    "gelu_tanh",
    "division",
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_output_is_the_sum_of_its_contributions(kind):
    torch.manual_seed(0)
    model = Blocks(kind).eval()
    ids = torch.randint(0, 20, (3, 6))
    with torch.no_grad():
        expected = model(ids)
    with ExplanationTrace(model) as trace, DynamicLinearMode(model):
        scores = model(ids)
    torch.testing.assert_close(scores.detach(), expected, rtol=1e-5, atol=1e-6)
    leaves = [trace.encoded_input, *trace.constants.values()]
    grads = torch.autograd.grad(scores.sum(), leaves, allow_unused=True)
    total = sum(
        (g * leaf.detach()).flatten(1).sum(1)
        for g, leaf in zip(grads, leaves, strict=True)
        if g is not None
    )
    torch.testing.assert_close(total, scores.detach(), rtol=1e-5, atol=1e-6)
    assert "positions.output" in trace.constants  # named after the module that made it
    tokens = (grads[0] * trace.encoded_input).sum(-1)
    assert (tokens.abs().sum(1) > 1e-3 * scores.detach().abs()).all()  # a live signal
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again


def test_an_infinite_mask_is_not_a_constant():
    torch.manual_seed(0)
    model = Blocks("eager_attention").eval()
    with ExplanationTrace(model) as trace, DynamicLinearMode(model):
        scores = model(torch.randint(0, 20, (2, 6)))
    grads = torch.autograd.grad(scores.sum(), list(trace.constants.values()), allow_unused=True)
    for (name, leaf), grad in zip(trace.constants.items(), grads, strict=True):
        assert torch.isfinite(leaf).all(), name
        assert grad is None or torch.isfinite(grad).all(), name


def test_outside_the_mode_nothing_changes():
    x = torch.randn(4, requires_grad=True)
    with DynamicLinearMode(nn.Identity()):
        y = torch.sigmoid(x)
    z = torch.sigmoid(x)
    torch.testing.assert_close(y, z)
    (inside,) = torch.autograd.grad(y.sum(), x)
    (outside,) = torch.autograd.grad(z.sum(), x)
    torch.testing.assert_close(inside * x, y.detach())  # linearised: x * [sigmoid(x) / x]
    assert not torch.allclose(outside * x, z.detach())
