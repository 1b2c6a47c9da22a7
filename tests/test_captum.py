"""BcosAttribution is a Captum attribution method: Captum's wrappers, metrics and visualisation
take it, and bcosify works without Captum installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from nets import assert_signal, random_bcos_cnn
from torch import nn

from bcosify import BcosAttribution, explain
from bcosify.errors import ExplanationError
from bcosify.nn import BcosConv2d

captum_attr = pytest.importorskip("captum.attr")
captum_metrics = pytest.importorskip("captum.metrics")


def test_it_is_a_captum_gradient_attribution_that_multiplies_by_inputs():
    method = BcosAttribution(random_bcos_cnn(0))
    assert isinstance(method, captum_attr.GradientAttribution)
    assert method.multiplies_by_inputs and method.has_convergence_delta()
    assert method.get_name() == "Bcos Attribution"


def test_tuple_inputs_give_tuple_attributions_equal_to_the_explanation():
    model = random_bcos_cnn(1)
    x = torch.rand(3, 3, 16, 16)
    (attributions,), delta = BcosAttribution(model).attribute(
        (x,), target=[0, 1, 2], return_convergence_delta=True
    )
    e = explain(model, x, target=[0, 1, 2])
    torch.testing.assert_close(attributions, e.input_contributions)
    torch.testing.assert_close(delta, e.residual)
    with pytest.raises(ExplanationError, match="one input tensor"):
        BcosAttribution(model).attribute((x, x), target=0)


def test_noise_tunnel_averages_exact_explanations_of_noisy_inputs():
    model = random_bcos_cnn(2)
    x = torch.rand(2, 3, 16, 16)
    method = BcosAttribution(model)
    tunnel = captum_attr.NoiseTunnel(method)
    assert tunnel.multiplies_by_inputs and tunnel.is_gradient_method
    # without noise, the tunnel is the method itself
    plain = method.attribute(x, target=1)
    quiet = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=1)
    torch.testing.assert_close(quiet, plain, rtol=1e-5, atol=1e-6)
    # with noise every sample is still an exact explanation: the deltas stay at rounding level
    noisy, delta = tunnel.attribute(
        x, nt_type="smoothgrad_sq", nt_samples=4, stdevs=0.1, target=1,
        return_convergence_delta=True,
    )  # fmt: skip
    assert noisy.shape == x.shape and delta.shape == (8,)
    signal = assert_signal(explain(model, x, target=1))
    assert float(delta.abs().max()) < 1e-4 * float(signal.min())
    # the noise changed the attributions: a tunnel that ignored it would fail this
    assert float((noisy - plain**2).norm() / (plain**2).norm()) > 1e-3


def test_infidelity_is_zero_for_a_linear_model_and_not_for_a_b_cos_one():
    """For B = 1 (a linear map, no encoding) contributions are exact for every perturbation."""

    @captum_metrics.infidelity_perturb_func_decorator(multiply_by_inputs=True)
    def perturb(inputs):
        return inputs - 0.1 * torch.randn_like(inputs)

    torch.manual_seed(0)
    x = torch.rand(3, 4, 8, 8) + 0.5  # away from 0: the perturbation is divided by the input
    scores = {}
    for b in (1.0, 2.0):
        model = nn.Sequential(BcosConv2d(4, 3, 3, b=b), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        attributions = BcosAttribution(model).attribute(x, target=2)
        scores[b] = captum_metrics.infidelity(
            model, perturb, x, attributions, target=2, n_perturb_samples=8
        )
        assert scores[b].shape == (3,)
    assert float(scores[1.0].max()) < 1e-8
    assert float(scores[2.0].min()) > 1e3 * float(scores[1.0].max())


def test_sensitivity_max_takes_the_attribute_method():
    model = random_bcos_cnn(3)
    x = torch.rand(2, 3, 16, 16)
    sensitivity = captum_metrics.sensitivity_max(
        BcosAttribution(model).attribute, x, target=torch.tensor([0, 4]), n_perturb_samples=3
    )
    assert sensitivity.shape == (2,)
    assert bool(torch.isfinite(sensitivity).all()) and bool((sensitivity > 0).all())


def test_additional_forward_args_reach_the_model():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = random_bcos_cnn(4)

        def forward(self, x, scale):
            return self.net(x) * scale

    model = Scaled()
    x = torch.rand(2, 3, 16, 16)
    once = BcosAttribution(model).attribute(x, target=0, additional_forward_args=1.0)
    twice = BcosAttribution(model).attribute(x, target=0, additional_forward_args=(2.0,))
    torch.testing.assert_close(twice, 2 * once, rtol=1e-5, atol=1e-6)


def test_convergence_delta_of_other_attributions_is_their_error():
    model = random_bcos_cnn(5)
    x = torch.rand(2, 3, 16, 16)
    method = BcosAttribution(model)
    attributions = method.attribute(x, target=3)
    assert float(method.compute_convergence_delta(attributions, x, target=3).abs().max()) < 1e-4
    half = method.compute_convergence_delta(attributions / 2, x, target=3)
    torch.testing.assert_close(half, attributions.flatten(1).sum(1) / 2, rtol=1e-4, atol=1e-4)


def test_captum_visualisation_draws_the_attributions(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import visualization

    model = random_bcos_cnn(6)
    x = torch.rand(1, 3, 16, 16)
    attributions = BcosAttribution(model).attribute(x, target=2)
    figure, _ = visualization.visualize_image_attr(
        attributions[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    figure.savefig(tmp_path / "captum.png")
    assert (tmp_path / "captum.png").stat().st_size > 0


def test_a_function_is_refused():
    with pytest.raises(ExplanationError, match=r"nn\.Module"):
        BcosAttribution(lambda x: x)


def test_without_captum_bcosify_and_its_own_explainer_still_work():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["captum"] = None  # as if Captum were not installed
        import torch
        import bcosify
        from bcosify.evaluate import build_explainer
        from bcosify.nn import BcosConv2d, InputEncoding
        model = torch.nn.Sequential(InputEncoding(), BcosConv2d(6, 2, 1),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        x = torch.rand(2, 3, 5, 5)
        a = bcosify.BcosAttribution(model).attribute(x, target=1)
        b = build_explainer("bcos", model).attribute(x, torch.tensor([1, 1]))
        assert torch.allclose(a, b), "the explainer is the attribution"
        assert bcosify.explain.attribution.CAPTUM_AVAILABLE is False
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_import_bcosify_does_not_import_captum():
    script = "import sys, bcosify; print('captum' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
