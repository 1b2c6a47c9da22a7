"""bcosify against the official B-cos v2 package (``bcos``, a test dependency): the layers with
``normalize_weights=True`` compute the published layer, and the official model zoo's state dicts
load into bcosify modules (``bcosify.models.create("bcos:<arch>", weights=...)``)."""

from __future__ import annotations

import pytest
import torch

from bcosify.nn import BcosConv2d, BcosLinear, explanation_mode

bcos_modules = pytest.importorskip("bcos.modules")

CONV_CASES = [
    # in, out, kernel, stride, padding, groups, b, max_out
    (6, 8, 3, 1, 1, 1, 2.0, 1),  # the fused B = 2 path
    (6, 8, 3, 2, 1, 1, 2.0, 1),
    (8, 12, 3, 1, 1, 4, 2.0, 1),
    (6, 4, 1, 1, 0, 1, 2.0, 1),
    (6, 8, 3, 1, 1, 1, 1.5, 1),
    (6, 8, 3, 1, 1, 1, 2.0, 2),
    (6, 8, 5, 2, 2, 1, 1.0, 1),
]


def _copy_official(official: torch.nn.Module, ours: torch.nn.Module, scale: float) -> None:
    """Random weights of norm about ``scale`` per row, the same in both layers."""
    with torch.no_grad():
        ours.weight.normal_().mul_(scale / ours.weight[0].norm())
        official.linear.weight.copy_(ours.weight)


@pytest.mark.parametrize("case", CONV_CASES)
def test_normalised_conv_is_the_official_layer(case):
    c_in, c_out, k, stride, padding, groups, b, max_out = case
    torch.manual_seed(sum(case))
    ours = BcosConv2d(
        c_in,
        c_out,
        k,
        stride,
        padding,
        groups=groups,
        b=b,
        max_out=max_out,
        normalize_weights=True,
    )
    official = bcos_modules.BcosConv2d(
        c_in, c_out, k, stride, padding, groups=groups, b=b, max_out=max_out
    )
    _copy_official(official, ours, scale=3.0)  # weights of norm 3: the scale must not matter
    x = torch.randn(2, c_in, 9, 11)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-5)
    # and the explanation: the gradient with the scaling detached
    x_ours, x_official = x.clone().requires_grad_(), x.clone().requires_grad_()
    with explanation_mode(ours):
        ours(x_ours).sum().backward()
    official.set_explanation_mode(True)
    official(x_official).sum().backward()
    # (the official layer adds 1e-6 to |cos| before the power when B != 2)
    torch.testing.assert_close(x_ours.grad, x_official.grad, rtol=1e-3, atol=1e-4)
    # the unnormalised layer is not the official one on these weights
    plain = BcosConv2d(c_in, c_out, k, stride, padding, groups=groups, b=b, max_out=max_out)
    plain.load_state_dict(ours.state_dict())
    assert not torch.allclose(plain(x), official(x), rtol=1e-2)


@pytest.mark.parametrize(("b", "max_out"), [(2.0, 1), (2.5, 1), (2.0, 3), (1.0, 1)])
def test_normalised_linear_is_the_official_layer(b, max_out):
    torch.manual_seed(int(b * 10) + max_out)
    ours = BcosLinear(7, 5, b=b, max_out=max_out, normalize_weights=True)
    official = bcos_modules.BcosLinear(7, 5, b=b, max_out=max_out)
    _copy_official(official, ours, scale=3.0)
    x = torch.randn(4, 3, 7)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-4, atol=1e-5)
