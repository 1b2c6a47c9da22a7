"""B-cos layers against the plain layers (B = 1) and an independent reference of the formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcosify.nn import BcosConv2d, BcosLinear, explanation_mode

EPS = 1e-6

CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, groups
    (6, 8, 3, 1, 1, 1, 1),
    (6, 8, 3, 2, 1, 1, 1),
    (4, 6, (3, 5), (2, 1), (0, 2), 1, 1),
    (8, 8, 3, 1, 2, 2, 1),
    (8, 12, 3, 2, 1, 1, 4),
    (8, 8, 3, 1, 1, 1, 8),  # depthwise
    (6, 4, 1, 1, 0, 1, 1),
    (6, 4, 7, 2, 3, 1, 2),
]


def reference_conv(x, weight, b, stride, padding, dilation, groups, normalize=False):
    """The B-cos formula written out per receptive field with unfold (no shared code)."""
    kh, kw = weight.shape[-2:]
    patches = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    n, _, positions = patches.shape
    c_in_g = x.shape[1] // groups
    c_out_g = weight.shape[0] // groups
    outs = []
    for g in range(groups):
        p = patches[:, g * c_in_g * kh * kw : (g + 1) * c_in_g * kh * kw]  # (N, Cg*k*k, L)
        w = weight[g * c_out_g : (g + 1) * c_out_g].reshape(c_out_g, -1)  # (Og, Cg*k*k)
        lin = torch.einsum("ok,nkl->nol", w, p)
        x_norm = (p.pow(2).sum(1, keepdim=True) + EPS).sqrt()
        denom = x_norm * w.norm(dim=1)[None, :, None] if normalize else x_norm
        outs.append(lin * (lin / denom).abs() ** (b - 1))
    out = torch.cat(outs, 1)
    h_out = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    return out.reshape(n, -1, h_out, positions // h_out)


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_b1_equals_plain_convolution(case):
    c_in, c_out, k, stride, padding, dilation, groups = case
    layer = BcosConv2d(c_in, c_out, k, stride, padding, dilation, groups, b=1.0)
    x = torch.randn(2, c_in, 11, 13)
    expected = F.conv2d(x, layer.weight, None, stride, padding, dilation, groups)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("b", [2.0, 2.5])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_formula(case, b, normalize):
    c_in, c_out, k, stride, padding, dilation, groups = case
    torch.manual_seed(hash(case) % 1000)
    layer = BcosConv2d(
        c_in, c_out, k, stride, padding, dilation, groups, b=b, normalize_weights=normalize
    )
    x = torch.randn(3, c_in, 11, 13)
    expected = reference_conv(
        x, layer.weight, b, _pair(stride), _pair(padding), _pair(dilation), groups, normalize
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_conv_padding_same_and_non_zero_padding_modes():
    x = torch.randn(2, 4, 9, 9)
    same = BcosConv2d(4, 5, 3, padding="same", dilation=2, b=2.0)
    expected = reference_conv(x, same.weight, 2.0, (1, 1), (2, 2), (2, 2), 1)
    torch.testing.assert_close(same(x), expected, rtol=1e-4, atol=1e-5)

    reflect = BcosConv2d(4, 5, 3, padding=1, padding_mode="reflect", b=2.0)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = reference_conv(padded, reflect.weight, 2.0, (1, 1), (0, 0), (1, 1), 1)
    torch.testing.assert_close(reflect(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("b", [1.0, 2.0, 2.5])
def test_linear_matches_formula(b):
    layer = BcosLinear(7, 5, b=b)
    x = torch.randn(4, 3, 7)
    lin = x @ layer.weight.T
    norm = (x.pow(2).sum(-1, keepdim=True) + EPS).sqrt()
    expected = lin if b == 1.0 else lin * (lin / norm).abs() ** (b - 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-6)
    if b == 1.0:
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight))


def test_linear_normalised_weights_and_max_out():
    layer = BcosLinear(6, 3, b=2.0, max_out=2, normalize_weights=True)
    assert layer.weight.shape == (6, 6)
    x = torch.randn(5, 6)
    lin = (x @ layer.weight.T).view(5, 3, 2)
    wn = layer.weight.norm(dim=1).view(3, 2)
    best = lin.argmax(-1, keepdim=True)
    out = lin.gather(-1, best).squeeze(-1)
    w_sel = wn.expand(5, 3, 2).gather(-1, best).squeeze(-1)
    norm = (x.pow(2).sum(-1, keepdim=True) + EPS).sqrt()
    torch.testing.assert_close(layer(x), out * (out / (norm * w_sel)).abs(), rtol=1e-4, atol=1e-6)


def test_conv_max_out_keeps_best_unit_before_scaling():
    layer = BcosConv2d(4, 3, 3, padding=1, groups=1, b=2.0, max_out=3)
    assert layer.weight.shape == (9, 4, 3, 3) and layer.out_channels == 3
    x = torch.randn(2, 4, 6, 6)
    lin = F.conv2d(x, layer.weight, padding=1).view(2, 3, 3, 6, 6).amax(2)
    sq = F.conv2d(x.pow(2).sum(1, keepdim=True), torch.ones(1, 1, 3, 3), padding=1)
    expected = lin * lin.abs() / (sq + EPS).sqrt()
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_from_conv_and_from_linear_keep_weights_and_state_dict_keys():
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2, dilation=1, groups=1, bias=True)
    bconv = BcosConv2d.from_conv(conv)
    assert list(bconv.state_dict()) == ["weight"]
    torch.testing.assert_close(bconv.weight, conv.weight)
    assert (bconv.stride, bconv.padding, bconv.kernel_size) == ((2, 2), (2, 2), (5, 5))
    linear = nn.Linear(5, 4)
    blinear = BcosLinear.from_linear(linear, b=1.0)
    assert list(blinear.state_dict()) == ["weight"]
    # a pretrained state dict without the bias loads directly
    fresh = BcosConv2d(3, 8, 5, stride=2, padding=2)
    fresh.load_state_dict({"weight": conv.weight.detach()})
    torch.testing.assert_close(fresh.weight, conv.weight)


def test_explanation_mode_detaches_only_the_scale():
    layer = BcosLinear(5, 1, b=2.0)
    x = torch.randn(5, requires_grad=True)
    with explanation_mode(layer):
        (grad,) = torch.autograd.grad(layer(x).sum(), x)
    lin = x @ layer.weight[0]
    scale = lin.abs() / (x.pow(2).sum() + EPS).sqrt()
    torch.testing.assert_close(grad, layer.weight[0] * scale.detach())
    # and the output is exactly W(x) x
    torch.testing.assert_close((grad * x).sum(), layer(x).squeeze())


def test_b_below_two_has_finite_gradients_at_zero():
    layer = BcosLinear(3, 2, b=1.5)
    x = torch.zeros(1, 3, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"b": 0.5}, "b must be"),
        ({"max_out": 0}, "max_out"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_invalid_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BcosConv2d(4, 4, 3, **kwargs)
    with pytest.raises(ValueError, match=message):
        BcosLinear(4, 4, **kwargs)


def test_conv_out_channels_must_divide_into_groups():
    with pytest.raises(ValueError, match="divisible by groups"):
        BcosConv2d(4, 6, 3, groups=4)
