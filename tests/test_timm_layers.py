"""timm building blocks the coverage sweep found refused, in small networks: each converts
exactly (equivalence at B = 1 with biases, completeness with the defaults on a live signal, no
bias left on the explained path)."""

from __future__ import annotations

import pytest
import torch
from test_convert import check_conversion, randomise_statistics
from torch import nn

import bcosify
from bcosify.nn import BcosConv2d, BcosSquaredReLU

timm = pytest.importorskip("timm")


def head(channels: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 5)]


def vgg_head() -> nn.Module:
    # VGG's ConvMlp pools up to its kernel size on small inputs: a branch on the shape
    from timm.models.vgg import ConvMlp

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvMlp(8, 16, kernel_size=7), *head(16))


def standardised_convolutions() -> nn.Module:
    # NF-Net and BiT stems: the weight is computed from parameters on every call
    layers = timm.layers
    return nn.Sequential(
        layers.ScaledStdConv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        layers.StdConv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        *head(8),
    )


def metaformer_blocks() -> nn.Module:
    # norms that subclass torch.nn's and call the same function; StarReLU; timm's Linear
    from timm.models import metaformer

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        metaformer.GroupNorm1NoBias(8),
        timm.layers.GroupNorm(num_groups=2, num_channels=8),
        metaformer.LayerNorm2dNoBias(8),
        metaformer.StarReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        timm.layers.Linear(8, 5),
    )


def dropout_before_stem() -> nn.Module:
    # EfficientViT: the image goes through a dropout before the first convolution
    return nn.Sequential(nn.Dropout(0.1), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), *head(8))


NETWORKS = {
    "vgg_head": vgg_head,
    "standardised_convolutions": standardised_convolutions,
    "metaformer_blocks": metaformer_blocks,
    "dropout_before_stem": dropout_before_stem,
}


@pytest.mark.parametrize("name", NETWORKS)
def test_timm_blocks_convert_exactly(name):
    torch.manual_seed(0)
    network = NETWORKS[name]()
    with torch.no_grad():  # StarReLU's scale and bias start at 1 and 0: make them matter
        for module in network.modules():
            if type(module).__name__ == "StarReLU":
                module.scale.fill_(0.7)
                module.bias.fill_(0.3)
    check_conversion(randomise_statistics(network))


def test_standardised_convolutions_become_plain_b_cos_convolutions():
    model, report = bcosify.convert(
        standardised_convolutions().eval(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3
    )
    assert isinstance(model.network[2], BcosConv2d)
    assert "weight-standardised" in str(report)


def test_star_relu_keeps_its_bias_only_with_keep_bias():
    network = metaformer_blocks().eval()
    options = {"input_mean": (0.5,) * 3, "input_std": (0.5,) * 3}
    default, _ = bcosify.convert(network, **options)
    kept, _ = bcosify.convert(network, b=1.0, keep_bias=True, **options)
    assert isinstance(default.network[4], BcosSquaredReLU)
    assert isinstance(kept.network[4].layer, BcosSquaredReLU)
    assert "network.4.bias" in dict(kept.named_parameters())
