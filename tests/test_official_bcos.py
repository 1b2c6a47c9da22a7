"""bcosify against the official B-cos v2 package (``bcos``, a test dependency): the layers with
``normalize_weights=True`` compute the published layer, and the official model zoo's state dicts
load into bcosify modules (``bcosify.models.create("bcos:<arch>", weights=...)``)."""

from __future__ import annotations

import pytest
import torch
from nets import (
    assert_differs,
    assert_same_function,
    assert_signal,
    keep_signal_alive,
    reversed_channels,
    spread,
)

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


# --- the official model zoo: bcosify.models.create("bcos:<arch>", weights=...) ---------------

ZOO = [
    "resnet18",
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("resnext50_32x4d", marks=pytest.mark.slow),
    "densenet121",
    pytest.param("vgg11_bnu", marks=pytest.mark.slow),
]


def _official_zoo_model(arch: str, seed: int) -> torch.nn.Module:
    """The zoo's model as the official package builds it (its ImageNet config), with random
    weights and random batch-norm statistics, so that every loaded number matters."""
    import bcos

    torch.manual_seed(seed)
    model = getattr(bcos.pretrained, arch)(pretrained=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
                module.running_mean.normal_()  # unused by the uncentered norm
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", ZOO)
def test_official_checkpoints_load_into_bcosify_modules(arch, tmp_path):
    import bcos

    import bcosify

    official = _official_zoo_model(arch, seed=len(arch))
    images = torch.rand(2, 3, 64, 64)
    encoded = bcos.data.transforms.AddInverse()(images)
    # a random zoo model outputs its logit bias alone: rescaled norms make every weight count.
    # After the first norm every layer is homogeneous in the norms' scale (weight-normalised
    # convolutions, pools, sums), so the logits less the bias grow with it: VGG's three
    # classifier layers without norms need a far larger scale than a ResNet's one
    keep_signal_alive(official, encoded, norms=True)
    with torch.no_grad():
        keep_signal_alive(official, encoded, norms=True, rms=10 / spread(official(encoded)))
    checkpoint = tmp_path / f"{arch}.pth"
    torch.save(official.state_dict(), checkpoint)  # a torch.hub state dict, like the zoo's
    model = bcosify.models.create(f"bcos:{arch}", weights=checkpoint).eval()
    with torch.no_grad():
        expected = official(encoded)
        tolerance = 1e-4 * float(assert_signal(expected))
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=tolerance)
        # the comparison can fail: the same weights with permuted output channels do not pass
        assert_differs(reversed_channels(model)(images), expected, rtol=1e-4, atol=tolerance)

    # the same explanation: the official explanation mode's gradient times the input
    e = bcosify.explain(model, images, target=[3, 7])
    signal = assert_signal(e)
    leaf = encoded.clone().requires_grad_()
    with official.explanation_mode():
        official(leaf)[[0, 1], [3, 7]].sum().backward()
    scale = float(e.contributions.abs().max())
    torch.testing.assert_close(e.contributions, leaf.grad * encoded, rtol=1e-3, atol=1e-4 * scale)
    assert (e.residual.abs() <= 1e-4 * signal).all(), (e.residual, signal)
    assert len(bcosify.models.class_names_of(model)) == 1000

    # saved and reloaded as a bcosify model (safetensors and JSON), outputs equal
    reloaded = bcosify.models.load_model(bcosify.models.save_model(model, tmp_path / "saved"))
    assert_same_function(model, images, reloaded.eval())


def test_zoo_errors_name_what_is_wrong(tmp_path):
    import bcosify
    from bcosify.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="available: resnet18"):
        bcosify.models.create("bcos:convnext_tiny_pn")
    wrong = tmp_path / "resnet34.pth"
    torch.save(_official_zoo_model("resnet18", 0).state_dict(), wrong)
    with pytest.raises(ModelSourceError, match=r"missing keys: network\.layer1\.2"):
        bcosify.models.create("bcos:resnet34", weights=wrong)


@pytest.mark.parametrize("smooth", [0, 5, 15])
def test_colour_explanation_is_the_official_visualisation(smooth):
    """The demo's colours are not an artefact of our drawing: on a B-cosified network's own
    explanations, :func:`bcosify.explain.colour_explanation` draws what the official
    ``gradient_to_image`` draws (up to rounding, and its 1e-12 alpha where the evidence is
    negative)."""
    gradient_to_image = pytest.importorskip("bcos.common").gradient_to_image
    from bcosify import convert, explain
    from bcosify.explain import colour_explanation

    torch.manual_seed(0)
    original = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 5, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    model = convert(original, input_mean=(0.5,) * 3, input_std=(0.25,) * 3).model.eval()
    images = torch.rand(3, 3, 20, 20)
    e = explain(model, images, torch.tensor([0, 2, 4]))
    ours = colour_explanation(e.inputs, e.weights, smooth=smooth)
    for i in range(len(images)):
        theirs = torch.as_tensor(gradient_to_image(e.inputs[i], e.weights[i], smooth=smooth))
        assert torch.equal(ours[i, ..., :3], theirs[..., :3])
        torch.testing.assert_close(ours[i, ..., 3], theirs[..., 3], atol=1e-6, rtol=0)
