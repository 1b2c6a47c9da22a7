"""B-cos layers against the plain layers (B = 1) and an independent reference of the formula."""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcosify.nn import BcosConv2d, BcosLinear, explanation_mode
from bcosify.nn import bcos_autograd as bcos_module

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


def reference_conv(x, weight, b, stride, padding, dilation, groups, normalize=False, detach=False):
    """The B-cos formula written out per receptive field with unfold (no shared code).

    ``detach=True`` detaches the scaling factor, as explanation mode does.
    """
    kh, kw = weight.shape[-2:]
    patches = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    n, _, positions = patches.shape
    c_in_g = x.shape[1] // groups
    c_out_g = weight.shape[0] // groups
    outs = []
    for g in range(groups):
        p = patches[:, g * c_in_g * kh * kw : (g + 1) * c_in_g * kh * kw]  # (N, Cg*k*k, L)
        w = weight[g * c_out_g : (g + 1) * c_out_g].reshape(c_out_g, -1)  # (Og, Cg*k*k)
        if normalize:  # B-cos v2: unit-norm weight rows
            w = w / w.norm(dim=1, keepdim=True)
        lin = torch.einsum("ok,nkl->nol", w, p)
        x_norm = (p.pow(2).sum(1, keepdim=True) + EPS).sqrt()
        # clamped at float64's smallest normal number: the derivative at a zero output is then
        # its limit, 0 (unclamped, autograd through the power gives inf * 0)
        scale = (lin / x_norm).abs().clamp_min(2.3e-308) ** (b - 1)
        outs.append(lin * (scale.detach() if detach else scale))
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


def reference_linear(layer, x, detach=False):
    """The linear layer in plain autograd: out * |out / ||x|| |^(B-1), the scale detached or
    not."""
    weight = layer._weight()
    out = x @ weight.T
    norm = (x.pow(2).sum(-1, keepdim=True) + layer.eps).sqrt()
    scale = (out.abs() / norm).clamp_min(2.3e-308) ** (layer.b - 1)  # as reference_conv
    return out * (scale.detach() if detach else scale)


# B = 2 has a path of its own (no power); any other B keeps the scale |cos|^(B-1)
FUSED_BS = [2.0, 1.1, 2.5]


@pytest.mark.parametrize("b", FUSED_BS)
@pytest.mark.parametrize("normalize_weights", [False, True])
@pytest.mark.parametrize("shape", [(7,), (4, 7), (2, 3, 7)])
def test_fused_linear_matches_autograd_gradcheck_and_torch_func(
    shape, normalize_weights, b, one_thread
):
    torch.manual_seed(len(shape))
    layer = BcosLinear(7, 5, b=b, normalize_weights=normalize_weights).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert "FusedBcosLinear" in layer(x).grad_fn.name()  # the fused path is the one tested
    for explaining in (False, True):
        with explanation_mode(layer, enabled=explaining):
            y = layer(x)
            grad = torch.randn_like(y)
            expected = reference_linear(layer, x, detach=explaining)
            torch.testing.assert_close(y, expected)
            want = torch.autograd.grad(expected, (x, layer.weight), grad)
            torch.testing.assert_close(torch.autograd.grad(y, (x, layer.weight), grad), want)
            again = torch.autograd.grad(layer(x), (x, layer.weight), grad, create_graph=True)
            torch.testing.assert_close(again, want)
            (only_x,) = torch.autograd.grad(layer(x), x, grad)
            torch.testing.assert_close(only_x, want[0])
            vectorized = torch.autograd.functional.jacobian(layer, x, vectorize=True)
            torch.testing.assert_close(vectorized, torch.autograd.functional.jacobian(layer, x))
            torch.testing.assert_close(torch.func.jacrev(layer)(x), vectorized)
    w = layer.weight.detach().clone().requires_grad_()

    def f(x, w):
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w), fast_mode=True)


def test_linear_normalised_weights_and_max_out():
    layer = BcosLinear(6, 3, b=2.0, max_out=2, normalize_weights=True)
    assert layer.weight.shape == (6, 6)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # the scale of the weights must not matter
    x = torch.randn(5, 6)
    unit = layer.weight / layer.weight.norm(dim=1, keepdim=True)
    out = (x @ unit.T).view(5, 3, 2).amax(-1)  # MaxOut over the unit-norm rows
    norm = (x.pow(2).sum(-1, keepdim=True) + EPS).sqrt()
    torch.testing.assert_close(layer(x), out * (out / norm).abs(), rtol=1e-4, atol=1e-6)


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


# The convolution without MaxOut has a hand-written backward
# (bcosify.nn.bcos_autograd.FusedBcosConv2d; B = 2 on a path of its own); these check it
# against finite differences and autograd.
FUSED_CASES = [
    # in, out, kernel, stride, padding, dilation, groups, padding_mode
    (3, 4, 3, 1, 1, 1, 1, "zeros"),
    (4, 6, 3, 2, 1, 1, 2, "zeros"),
    (4, 4, (3, 2), 1, "same", 2, 4, "zeros"),
    (3, 4, (2, 3), 1, "same", 1, 1, "zeros"),  # uneven 'same' padding
    (3, 4, 3, 1, "valid", 1, 1, "zeros"),
    (3, 4, 3, 1, 2, 1, 1, "reflect"),
    (3, 4, 1, 1, 0, 1, 1, "zeros"),
    (4, 6, 1, 2, 0, 1, 2, "zeros"),  # 1 x 1 with stride: the window sum is a strided view
    (2, 4, 3, 1, 3, 1, 1, "zeros"),  # padding beyond the kernel: generic window adjoint
    (4, 4, 3, 2, 1, 1, 4, "zeros"),  # depthwise at stride 2: transposed window adjoint
    (4, 8, 3, 1, 1, 1, 4, "zeros"),  # depthwise with two outputs per channel
]


@pytest.fixture
def one_thread():
    """Tiny float64 tensors: one thread is faster, and immune to a busy machine (measured 3 s
    against 45 s for the gradchecks below with two threads on a loaded two-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fused_layer(case, b=2.0):
    c_in, c_out, k, stride, padding, dilation, groups, mode = case
    # a seed of the case itself: str hashes change from process to process, and one seed in
    # about a thousand puts an output next to the kink of |w . x|, where finite differences fail
    torch.manual_seed(zlib.crc32(repr(case).encode()))
    layer = BcosConv2d(
        c_in, c_out, k, stride, padding, dilation, groups, padding_mode=mode, b=b
    ).double()
    x = torch.randn(2, c_in, 4, 5, dtype=torch.float64, requires_grad=True)
    return layer, x


def reference_for(layer, x, detach=False):
    """reference_conv with the layer's padding applied explicitly."""
    padding = layer.padding
    if isinstance(padding, str) or layer.padding_mode != "zeros":
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        padding = (0, 0)
    args = (layer.stride, padding, layer.dilation, layer.groups)
    return reference_conv(x, layer.weight, layer.b, *args, detach=detach)


def as_function(layer):
    """The layer as a function of its input and weight, for gradcheck."""
    return lambda x, w: torch.func.functional_call(layer, {"weight": w}, (x,))


# B = 1.1 is left to the autograd reference: |cos|^0.1 bends so sharply near 0 that finite
# differences there are no measure
@pytest.mark.parametrize("b", [2.0, 2.5])
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_gradients_pass_gradcheck_and_gradgradcheck(case, b, one_thread):
    layer, x = fused_layer(case, b)
    assert "FusedBcosConv2d" in layer(x).grad_fn.name()  # the fused path is the one tested
    w = layer.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(as_function(layer), (x, w))
    # second order goes through the out-of-place backward; fast mode (finite differences along
    # random directions) keeps it to a fraction of a second
    assert torch.autograd.gradgradcheck(as_function(layer), (x, w), fast_mode=True)


@pytest.mark.parametrize("b", FUSED_BS)
@pytest.mark.parametrize("one_example_at_a_time", [False, True])
@pytest.mark.parametrize("explaining", [False, True])
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_gradients_match_autograd_reference(
    case, explaining, one_example_at_a_time, b, one_thread, monkeypatch
):
    # in explanation mode the scale is a constant: d y / d x = W * scale, which finite
    # differences of the (unchanged) forward cannot check, so compare with autograd instead
    if one_example_at_a_time:  # slices of one element: the elementwise passes go example-wise
        monkeypatch.setattr(bcos_module, "_SQUARES_SLICE", 1)
    layer, x = fused_layer(case, b)
    with explanation_mode(layer, enabled=explaining):
        y = layer(x)
        grad = torch.randn_like(y)
        expected = reference_for(layer, x, detach=explaining)
        torch.testing.assert_close(y, expected)
        want = torch.autograd.grad(expected, (x, layer.weight), grad)
        got = torch.autograd.grad(y, (x, layer.weight), grad, retain_graph=True)
        torch.testing.assert_close(got, want)
        # the first backward wrote its gradient over the saved output (the saved scale when
        # B != 2): a second one through the retained graph recomputes it
        second = torch.autograd.grad(y, (x, layer.weight), grad)
        torch.testing.assert_close(second, want)
        # the differentiable backward (create_graph=True) gives the same first derivatives
        again = torch.autograd.grad(layer(x), (x, layer.weight), grad, create_graph=True)
        torch.testing.assert_close(again, want)
        # only what is asked for: the input alone, the weight alone
        (only_x,) = torch.autograd.grad(layer(x), x, grad)
        (only_w,) = torch.autograd.grad(layer(x), layer.weight, grad)
        torch.testing.assert_close((only_x, only_w), want)


@pytest.mark.parametrize("b", FUSED_BS)
def test_fused_works_under_torch_func_and_vectorized_jacobians(b, one_thread):
    layer, x = fused_layer(FUSED_CASES[1], b)
    x = x[:1, :, :3, :3].detach()
    for explaining in (False, True):
        with explanation_mode(layer, enabled=explaining):
            jacobian = torch.autograd.functional.jacobian(layer, x)
            vectorized = torch.autograd.functional.jacobian(layer, x, vectorize=True)
            torch.testing.assert_close(torch.func.jacrev(layer)(x), jacobian)
            torch.testing.assert_close(vectorized, jacobian)
            batched = torch.func.vmap(lambda xi: layer(xi[None])[0])(x)
            torch.testing.assert_close(batched, layer(x))


@pytest.mark.parametrize("b", FUSED_BS)
def test_fused_keeps_one_output_sized_tensor_for_backward_two_when_b_is_not_2(b):
    # plain autograd kept three (|out|, the scale and out) and more at B != 2 (the power's
    # input and output); the fused function keeps out, the scale |cos|^(B-1) when B != 2, and
    # the per-group norm map, besides the input and the weight that a convolution keeps anyway
    layer = BcosConv2d(8, 16, 3, padding=1, groups=2, b=b)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        y = layer(x)
    own = {x.untyped_storage().data_ptr(), layer.weight.untyped_storage().data_ptr()}
    extra = sum(size for ptr, size in storages.items() if ptr not in own)
    norm_map = 2 * 2 * 10 * 10 * 4
    outputs = 1 if b == 2.0 else 2
    assert extra <= outputs * y.nbytes + norm_map + layer._window.nbytes


@pytest.mark.parametrize("b", [2.0, 1.1])
def test_fused_channels_last_and_autocast(b, one_thread):
    layer = BcosConv2d(4, 6, 3, padding=1, b=b)
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    y = layer(x)
    (grad_x,) = torch.autograd.grad(y.sum(), x)
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y_last = layer(x_last)
    (grad_last,) = torch.autograd.grad(y_last.sum(), x_last)
    torch.testing.assert_close((y_last, grad_last), (y, grad_x))
    # autocast takes the plain autograd path, which casts the gradients back
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_low = layer(x)
    assert y_low.dtype == torch.bfloat16 and "FusedBcosConv2d" not in y_low.grad_fn.name()
    (grad_low,) = torch.autograd.grad(y_low.float().sum(), x)
    assert grad_low.dtype == torch.float32
    torch.testing.assert_close(grad_low, grad_x, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("b", [2.0, 2.5])
def test_squares_summed_a_few_channels_at_a_time(b, monkeypatch, one_thread):
    layer = BcosConv2d(4, 6, 3, stride=2, padding=1, groups=2, b=b).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    expected = reference_conv(x, layer.weight, b, (2, 2), (1, 1), (1, 1), 2)
    want = torch.autograd.grad(expected.sum(), (x, layer.weight))
    monkeypatch.setattr(bcos_module, "_SQUARES_SLICE", 1)  # one channel at a time
    y = layer(x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), (x, layer.weight)), want)
