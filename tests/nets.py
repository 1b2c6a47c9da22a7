"""Random small B-cos networks made of every core building block, for the tests."""

from __future__ import annotations

import copy

import torch
from torch import nn

from bcosify import Explanation
from bcosify.nn import (
    BcosBatchNorm2d,
    BcosConv2d,
    BcosGELU,
    BcosGroupNorm,
    BcosHardswish,
    BcosLayerNorm2d,
    BcosLinear,
    BcosMish,
    BcosSiLU,
    InputEncoding,
    LogitBias,
)

NORMS = (
    BcosBatchNorm2d,
    lambda c: BcosGroupNorm(2, c),
    BcosLayerNorm2d,
)
ACTIVATIONS = (nn.ReLU, BcosGELU, BcosSiLU, BcosHardswish, BcosMish)


class Residual(nn.Module):
    def __init__(self, channels: int, norm, activation, b: float) -> None:
        super().__init__()
        self.conv = BcosConv2d(channels, channels, 3, padding=1, b=b)
        self.norm = norm(channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


def random_bcos_cnn(seed: int, b: float = 2.0, num_classes: int = 5) -> nn.Module:
    """Encoding, convs, a norm, an activation, a residual block, pooling, a head, a logit bias;
    live (:func:`keep_signal_alive` on random 16 x 16 images), so that its logits are not the
    logit bias alone."""
    generator = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    torch.manual_seed(seed)
    norm, activation = pick(NORMS), pick(ACTIVATIONS)
    pool = pick((nn.MaxPool2d(2), nn.AvgPool2d(2)))
    linear_head = bool(torch.randint(2, (1,), generator=generator))
    head: list[nn.Module]
    if linear_head:
        head = [nn.AdaptiveAvgPool2d(2), nn.Flatten(), BcosLinear(16 * 4, num_classes, b=b)]
    else:
        head = [BcosConv2d(16, num_classes, 1, b=b), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = nn.Sequential(
        InputEncoding(),
        BcosConv2d(6, 8, 3, padding=1, b=b),
        norm(8),
        activation(),
        pool,
        Residual(8, norm, activation, b),
        BcosConv2d(8, 16, 3, stride=2, padding=1, groups=2, b=b, max_out=2),
        norm(16),
        activation(),
        *head,
        LogitBias.for_classes(num_classes),
    )
    randomise_norms(model)
    images = torch.rand(4, 3, 16, 16, generator=generator)
    return keep_signal_alive(model, images)


def randomise_norms(model: nn.Module) -> None:
    """Give every norm random scales and statistics, so that they are not identities."""
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "weight", None) is not None and not isinstance(
                module, (nn.Conv2d, nn.Linear)
            ):
                module.weight.uniform_(0.5, 1.5)
            if isinstance(module, BcosBatchNorm2d) and module.running_var is not None:
                module.running_var.uniform_(0.5, 2.0)


def keep_signal_alive(
    model: nn.Module, images: torch.Tensor, norms: bool = False, rms: float = 1.0
) -> nn.Module:
    """Rescale every B-cos layer so that its output has unit RMS on ``images`` (like LSUV).

    Deep B-cos networks with random weights shrink their signal by ``|cos|^(B-1)`` per layer
    until the logits underflow to the logit bias, which would make every "outputs equal" and
    every completeness check vacuous. Scaling a layer's weight by ``c`` scales its output by
    ``c^B``; one forward pass with hooks fixes every layer in execution order. A layer that
    normalises its weights (the official zoo's) has no scale to set: ``norms=True`` rescales
    the affine weight of every batch norm too (``c`` scales its output by ``c``), bcosify's or
    any ``torch.nn`` one (the official package's norms are). Such a layer's output is its
    input's norm times ``|cos|^B``: a head on unit-RMS features then gives logits of about
    ``sqrt(fan-in) / fan-in``; ``rms`` sets another scale for every rescaled layer's output.
    """

    def rescale(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        factor = rms / output.detach().pow(2).mean().sqrt().clamp_min(1e-30)
        with torch.no_grad():
            if isinstance(module, (BcosConv2d, BcosLinear)):
                module.weight.mul_(factor ** (1.0 / module.b))
            else:
                module.weight.mul_(factor)
        return output * factor

    def scalable(module: nn.Module) -> bool:
        if isinstance(module, (BcosConv2d, BcosLinear)):
            return not module.normalize_weights
        batch_norm = isinstance(module, (BcosBatchNorm2d, nn.modules.batchnorm._BatchNorm))
        return norms and batch_norm and getattr(module, "weight", None) is not None

    layers = [m for m in model.modules() if scalable(m)]
    assert layers, "nothing to rescale: pass norms=True for weight-normalised B-cos layers"
    handles = [m.register_forward_hook(rescale) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    return model


def spread(outputs: torch.Tensor) -> float:
    """How much ``outputs`` differ across examples and classes: the largest distance of one
    from their mean. 0 for a dead network, whose every output is its logit bias."""
    outputs = outputs.detach().float()
    return float((outputs - outputs.mean()).abs().max())


def assert_signal(found: Explanation | torch.Tensor, at_least: float = 1e-2) -> torch.Tensor:
    """Assert that the input, not the constants, carries the output; returns the signal.

    For outputs (a tensor): they differ across examples and classes by more than
    ``at_least``; returns :func:`spread` as a tensor. For an explanation: the explained scores
    less their constants (what the input adds) come from contributions whose absolute sum is
    at least ``at_least * max(1, |score|)`` on every example, and the logits differ by more
    than ``at_least``; returns that absolute sum per example, the scale to hold a residual
    or a difference to (``residual <= 1e-4 * signal``). Equalities and completeness on a
    network that fails this hold whatever its weights are.
    """
    if isinstance(found, torch.Tensor):
        size = spread(found)
        assert size > at_least, f"the outputs hardly differ (spread {size:.3g}): a dead network"
        return torch.tensor(size)
    signal = found.contributions.abs().flatten(1).sum(1)
    floor = at_least * found.scores.abs().clamp_min(1)
    constants = sum(found.constants.values(), torch.zeros_like(found.scores))
    assert (signal >= floor).all(), (
        f"the input contributes next to nothing: contributions {signal.tolist()}, scores "
        f"{found.scores.tolist()}, of which constants {constants.tolist()}"
    )
    size = spread(found.logits)
    assert size > at_least, f"the logits hardly differ (spread {size:.3g}): a dead network"
    return signal


def reversed_channels(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the output channels (first dimension) of every weight reversed:
    the same architecture with other weights, for checks that an equality could fail."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            if parameter.ndim > 1:
                parameter.copy_(parameter.flip(0))
    return other


def assert_differs(a: torch.Tensor, b: torch.Tensor, rtol: float = 0.0, atol: float = 0.0) -> None:
    """The can-fail companion of ``assert_close(a, b, rtol=rtol, atol=atol)``: ``a``, what a
    different model gives, fails that comparison."""
    difference = float((a - b).abs().max())
    assert not torch.allclose(a, b, rtol=rtol, atol=atol), (
        f"a different model passes the comparison too (largest difference {difference:.3g})"
    )


def assert_same_function(
    model: nn.Module,
    x: torch.Tensor | tuple,
    *copies: nn.Module,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
    """Every one of ``copies`` computes ``model(x)`` (exactly by default; ``x`` a tuple for
    several arguments), on outputs that carry signal (:func:`assert_signal`), and the same
    comparison fails for ``model`` with its weights' output channels reversed: a copy, save or
    load that scrambled the weights fails."""
    arguments = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        expected = model(*arguments)
        assert_signal(expected)
        for copied in copies:
            torch.testing.assert_close(copied(*arguments), expected, rtol=rtol, atol=atol)
        assert_differs(reversed_channels(model)(*arguments), expected, rtol=rtol, atol=atol)
