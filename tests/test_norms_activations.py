"""Norms and gated activations: same function as PyTorch's, dynamic linear in explanation mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcosify.nn import (
    BcosBatchNorm2d,
    BcosGELU,
    BcosGroupNorm,
    BcosHardswish,
    BcosLayerNorm,
    BcosLayerNorm2d,
    BcosMish,
    BcosSiLU,
    explanation_mode,
)


def _input_gradient(module: nn.Module, x: torch.Tensor, explaining: bool) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with explanation_mode(module, enabled=explaining):
        out = module(x)
    (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
    return grad


def test_batchnorm_from_batchnorm_with_bias_is_exact_in_eval():
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 4, 4)
    folded = BcosBatchNorm2d.from_batchnorm(bn, bias=True).eval()
    torch.testing.assert_close(folded(x), bn(x))
    no_bias = BcosBatchNorm2d.from_batchnorm(bn).eval()
    assert no_bias.bias is None and "bias" not in no_bias.state_dict()
    expected = x * (bn.weight / (bn.running_var + bn.eps).sqrt()).view(1, -1, 1, 1)
    torch.testing.assert_close(no_bias(x), expected)


def test_batchnorm_training_uses_batch_variance_and_tracks_it_like_torch():
    ours, ref = BcosBatchNorm2d(4), nn.BatchNorm2d(4)
    for _ in range(3):
        x = torch.randn(8, 4, 5, 5) * 3 + 1
        out = ours(x)
        ref(x)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out, x / (var + 1e-5).sqrt().view(1, -1, 1, 1))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 3


def test_batchnorm_explanation_mode_detaches_batch_variance():
    bn = BcosBatchNorm2d(3)  # training mode: the variance depends on the batch
    x = torch.randn(4, 3, 2, 2)
    grad = _input_gradient(bn, x, explaining=True)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)
    torch.testing.assert_close(grad, weights / (var + 1e-5).sqrt().view(1, -1, 1, 1))


def _uncentered_reference(x, weight, explaining):
    """The training-mode formula, by autograd: ``x * weight / sqrt(var + eps)``."""
    var = x.var(dim=(0, 2, 3), unbiased=False)
    inv_std = (var + 1e-5).rsqrt()
    if explaining:
        inv_std = inv_std.detach()
    return x * (inv_std * weight).view(1, -1, 1, 1)


@pytest.mark.parametrize("explaining", [False, True])
def test_batchnorm_training_gradients_match_autograd_through_the_formula(explaining):
    torch.manual_seed(0)
    bn = BcosBatchNorm2d(5).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
    x = (torch.randn(3, 5, 4, 6, dtype=torch.float64) * 2 + 0.7).requires_grad_()
    grad = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    with explanation_mode(bn, enabled=explaining):
        out = bn(x)
        dx, dw = torch.autograd.grad(out, (x, bn.weight), grad)
    weight = bn.weight.detach().clone().requires_grad_()
    ref = _uncentered_reference(x, weight, explaining)
    ref_dx, ref_dw = torch.autograd.grad(ref, (x, weight), grad)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(dx, ref_dx)
    torch.testing.assert_close(dw, ref_dw)


@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_training_statistics_a_few_examples_at_a_time(affine, monkeypatch):
    # the variance is summed over slices of the batch, and sum(dy * x) comes from torch's fused
    # batch norm backward where there is a weight: both must equal the plain formula
    import bcosify.nn.norm as norm_module

    torch.manual_seed(1)
    bn = BcosBatchNorm2d(4, affine=affine).double()
    x = (torch.randn(5, 4, 3, 7, dtype=torch.float64) * 3 + 1.5).requires_grad_()
    grad = torch.randn(5, 4, 3, 7, dtype=torch.float64)
    weight = torch.ones(4, dtype=torch.float64, requires_grad=True)
    ref = _uncentered_reference(x, weight, explaining=False)
    want = torch.autograd.grad(ref, (x, weight), grad)
    monkeypatch.setattr(norm_module, "_SLICE", 1)  # one example at a time
    out = bn(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * x.var(dim=(0, 2, 3)))
    params = (x, bn.weight) if affine else (x,)
    torch.testing.assert_close(torch.autograd.grad(out, params, grad), want[: len(params)])


def test_batchnorm_training_passes_gradcheck_gradgradcheck_and_vmap():
    bn = BcosBatchNorm2d(3).double()
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True) + 0.5

    def f(x, w):
        return torch.func.functional_call(bn, {"weight": w}, (x,))

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))
    jacobian = torch.autograd.functional.jacobian(lambda x: f(x, w), x)
    vectorized = torch.autograd.functional.jacobian(lambda x: f(x, w), x, vectorize=True)
    torch.testing.assert_close(vectorized, jacobian)
    # torch.func transforms refuse in-place updates of running statistics (as for nn.BatchNorm2d)
    stateless = BcosBatchNorm2d(3, track_running_stats=False).double()
    jacrev = torch.func.jacrev(lambda x: torch.func.functional_call(stateless, {"weight": w}, x))
    torch.testing.assert_close(jacrev(x), jacobian)


@pytest.mark.parametrize(
    ("ours", "reference", "shape"),
    [
        (BcosLayerNorm(6), nn.LayerNorm(6, bias=False), (2, 3, 6)),
        (BcosGroupNorm(2, 6), nn.GroupNorm(2, 6), (2, 6, 3, 3)),
        (BcosLayerNorm2d(6), None, (2, 6, 3, 3)),
    ],
)
def test_centred_norms_match_torch_and_detach_only_the_std(ours, reference, shape):
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    x = torch.randn(shape)
    if reference is not None:
        with torch.no_grad():
            reference.weight.copy_(ours.weight)
            if reference.bias is not None:
                reference.bias.zero_()
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    # explanation mode computes the same values ...
    with torch.no_grad(), explanation_mode(ours):
        explained = ours(x)
    torch.testing.assert_close(explained, ours(x), rtol=1e-5, atol=1e-5)
    # ... and its gradient treats the std as a constant: the map is then linear, W(x) x = y
    dims = {BcosLayerNorm: (-1,), BcosLayerNorm2d: (1,), BcosGroupNorm: None}[type(ours)]
    grad = _input_gradient(ours, x, explaining=True)
    full = _input_gradient(ours, x, explaining=False)
    assert not torch.allclose(grad, full)
    if dims is not None:
        xr = x.clone().requires_grad_(True)
        std = (xr.var(dim=dims, unbiased=False, keepdim=True) + ours.eps).sqrt().detach()
        shape_w = [1] * x.ndim
        shape_w[dims[0]] = -1
        manual = (xr - xr.mean(dim=dims, keepdim=True)) / std * ours.weight.view(shape_w)
        weights = torch.linspace(-1, 1, manual.numel()).view_as(manual)
        (expected,) = torch.autograd.grad((manual * weights).sum(), xr)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_layernorm2d_matches_channel_layernorm():
    norm = BcosLayerNorm2d(4, bias=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 3, 5)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (4,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), ref.permute(0, 3, 1, 2))
    with explanation_mode(norm):
        explained = norm(x)
        torch.testing.assert_close(explained, ref.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    # both modes leave the output channels last in memory, as F.layer_norm does, so that the
    # convolutions after the norm run the same (faster) kernels when explaining
    assert explained.stride() == norm(x).stride() == ref.permute(0, 3, 1, 2).stride()
    assert explained.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("module", "function", "gate"),
    [
        (BcosGELU(), F.gelu, lambda x: 0.5 * (1 + torch.erf(x / 2**0.5))),
        (BcosGELU("tanh"), lambda x: F.gelu(x, approximate="tanh"), None),
        (BcosSiLU(), F.silu, torch.sigmoid),
        (BcosHardswish(), F.hardswish, lambda x: F.relu6(x + 3) / 6),
        (BcosMish(), F.mish, lambda x: torch.tanh(F.softplus(x))),
    ],
)
def test_gated_activations(module, function, gate):
    x = torch.randn(50)
    torch.testing.assert_close(module(x), function(x))
    with explanation_mode(module):
        torch.testing.assert_close(module(x), function(x), rtol=1e-5, atol=1e-6)
    grad = _input_gradient(module, x, explaining=True)
    expected_gate = module.gate(x) if gate is None else gate(x)
    torch.testing.assert_close(
        grad, torch.linspace(-1, 1, 50) * expected_gate, atol=1e-6, rtol=1e-5
    )
    # outside explanation mode: the true derivative of the activation
    xr = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad((function(xr) * torch.linspace(-1, 1, 50)).sum(), xr)
    torch.testing.assert_close(_input_gradient(module, x, explaining=False), true)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match="approximate"):
        BcosGELU("fast")
