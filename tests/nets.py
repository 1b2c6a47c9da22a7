"""Random small B-cos networks made of every core building block, for the tests."""

from __future__ import annotations

import torch
from torch import nn

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
    """Encoding, convs, a norm, an activation, a residual block, pooling, a head, a logit bias."""
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
    return model.eval()


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


def keep_signal_alive(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Rescale every B-cos layer so that its output has unit RMS on ``images`` (like LSUV).

    Deep B-cos networks with random weights shrink their signal by ``|cos|^(B-1)`` per layer
    until the logits underflow, which would make completeness checks vacuous. Scaling a
    layer's weight by ``c`` scales its output by ``c^B``; one forward pass with hooks fixes
    every layer in execution order.
    """

    def rescale(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        rms = output.detach().pow(2).mean().sqrt().clamp_min(1e-30)
        with torch.no_grad():
            module.weight.mul_(rms ** (-1.0 / module.b))
        return output / rms

    layers = [m for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    handles = [m.register_forward_hook(rescale) for m in layers]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for handle in handles:
            handle.remove()
    return model
