"""bcosify.compile: the compiled model computes what the eager one computes, gradients and
explanations included.

The default tests compile with the ``aot_eager`` backend: TorchDynamo captures the graph and
AOTAutograd traces forward and backward, the hand-written ``autograd.Function`` backward passes
included, which is where a compiled B-cos model could go wrong; only the kernel generation of
the default backend (Inductor) is left out, because it takes minutes on a small CPU. The slow
test runs Inductor itself.
"""

from __future__ import annotations

import copy

import pytest
import torch
from nets import (
    assert_differs,
    assert_signal,
    keep_signal_alive,
    random_bcos_cnn,
    reversed_channels,
)
from torch import nn

import bcosify
from bcosify.nn import BcosBatchNorm2d, BcosConv2d, InputEncoding, LogitBias, explanation_mode


def depthwise_net() -> nn.Module:
    """Encoding, a depthwise B-cos convolution at stride 2, batch norm, a 1 x 1 head, a bias."""
    torch.manual_seed(3)
    return nn.Sequential(
        InputEncoding(),
        BcosConv2d(6, 12, 3, padding=1),
        BcosBatchNorm2d(12),
        BcosConv2d(12, 12, 3, stride=2, padding=1, groups=12),
        BcosBatchNorm2d(12),
        nn.ReLU(),
        BcosConv2d(12, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        LogitBias.for_classes(4),
    )


NETS = {
    "random_cnn_0": lambda: random_bcos_cnn(0),
    "random_cnn_3": lambda: random_bcos_cnn(3),
    # B != 2: the fused functions that keep the scale |cos|^(B-1)
    "random_cnn_0_b1.1": lambda: random_bcos_cnn(0, b=1.1),
    "depthwise": depthwise_net,
}


def training_pass(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Train-mode output, the gradients of a weighted sum for every parameter and the input."""
    model.train()
    x = x.clone().requires_grad_(True)
    out = model(x)
    weights = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *model.parameters()])
    return (out.detach(), *grads)


@pytest.fixture
def fresh_compiler():
    """Compiled graphs of one test must not be reused by another (same code objects)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "name",
    [
        "random_cnn_0",
        "random_cnn_0_b1.1",
        pytest.param("depthwise", marks=pytest.mark.slow),  # 12 s: grouped convolutions
        pytest.param("random_cnn_3", marks=pytest.mark.slow),  # other norm, activation, pool
    ],
)
def test_compiled_model_matches_eager_in_training_evaluation_and_explanations(name, fresh_compiler):
    x = torch.rand(4, 3, 12, 12)
    eager = keep_signal_alive(NETS[name](), x)  # else the explanations are the logit bias
    compiled = bcosify.compile(copy.deepcopy(eager), backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graph
        torch.testing.assert_close(training_pass(compiled, x), training_pass(eager, x))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    # batch norm updated its running statistics identically
    torch.testing.assert_close(compiled.state_dict(), eager.state_dict())
    compiled.eval(), eager.eval()
    torch.testing.assert_close(compiled(x), eager(x))
    # a graph compiled in explanation mode but outside an explanation, then an explanation:
    # the traced input and constants must still be handed to the explainer
    with explanation_mode(compiled), explanation_mode(eager):
        torch.testing.assert_close(compiled(x), eager(x))
    for target in (None, 1):
        want = bcosify.explain(eager, x, target=target, check="raise")
        got = bcosify.explain(compiled, x, target=target, check="raise")
        signal = assert_signal(want)
        torch.testing.assert_close(got.weights, want.weights)
        torch.testing.assert_close(got.contributions, want.contributions)
        torch.testing.assert_close(got.constants, want.constants)
        assert got.constants and list(got.constants) == list(want.constants)  # the logit bias
        assert (got.residual.abs() <= 1e-4 * signal).all(), (got.residual, signal)
    # the comparison can fail: another model's explanation is not the eager one's
    other = bcosify.explain(reversed_channels(eager), x, target=1, check="raise")
    assert_differs(other.contributions, want.contributions, rtol=1.3e-6, atol=1e-5)
    # back to training after explaining: the training graph is used again, still exact
    torch.testing.assert_close(training_pass(compiled, x), training_pass(eager, x))


def test_compile_is_in_place_and_keeps_the_model(fresh_compiler):
    model = depthwise_net()
    keys = list(model.state_dict())
    assert bcosify.compile(model, backend="eager") is model
    assert list(model.state_dict()) == keys  # no _orig_mod. prefix: saving and loading unchanged
    assert isinstance(model, nn.Sequential)
    with pytest.raises(TypeError, match=r"expects a torch\.nn\.Module, got function"):
        bcosify.compile(lambda x: x)


def test_training_and_evaluation_compile_to_one_graph(fresh_compiler):
    # outside explanations nothing breaks the graph: fullgraph=True compiles or raises
    model = bcosify.compile(depthwise_net(), backend="aot_eager", fullgraph=True)
    x = torch.rand(2, 3, 12, 12)
    training_pass(model, x)
    model.eval()
    model(x)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager(fresh_compiler):
    # the default backend generates C++ kernels on the CPU: about a minute for this network
    x = torch.rand(2, 3, 12, 12)
    eager = keep_signal_alive(depthwise_net(), x)
    compiled = bcosify.compile(copy.deepcopy(eager))
    torch.testing.assert_close(training_pass(compiled, x), training_pass(eager, x))
    compiled.eval(), eager.eval()
    want = bcosify.explain(eager, x, check="raise")
    got = bcosify.explain(compiled, x, check="raise")
    assert_signal(want)
    torch.testing.assert_close(got.contributions, want.contributions)
    torch.testing.assert_close(got.constants, want.constants)
