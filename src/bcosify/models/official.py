"""The official B-cos v2 model zoo (Böhle et al., TPAMI 2024) in bcosify modules: ``"bcos:<arch>"``.

The zoo's checkpoints (the ``torch.hub`` state dicts of the ``bcos`` package) are ImageNet
models that take ``[x, 1 - x]`` of RGB images in ``[0, 1]``. Their layout, read from the ``bcos``
package: B-cos convolutions with unit-norm weight rows (``<path>.linear.weight``; here
:class:`~bcosify.nn.BcosConv2d` with ``normalize_weights=True``, key ``<path>.weight``),
uncentered batch norms without bias (their unused ``running_mean`` is dropped), no
activations, average instead of max pooling, the classifier a 1 x 1 B-cos convolution before
the global pooling, and the logit bias ``-log(C - 1)``.

:class:`OfficialBcosModel` wraps such a network with the input encoding and the logit bias, so
that it takes RGB images in ``[0, 1]`` like a converted model: :func:`bcosify.explain`, the
explainers and metrics of :mod:`bcosify.evaluate` and the command line take it.
ConvNeXt and ViT entries of the zoo are not supported (their layers differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelSourceError
from ..nn import BcosBatchNorm2d, BcosConv2d, InputEncoding, LogitBias

__all__ = ["ARCHITECTURES", "OfficialBcosModel", "official_state_dict"]


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> BcosConv2d:
    return BcosConv2d(
        c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, normalize_weights=True
    )


class BasicBlock(nn.Module):
    """Two 3 x 3 B-cos convolutions with norms, and the shortcut (no activations)."""

    expansion = 1

    def __init__(
        self, c_in: int, planes: int, stride: int, downsample: nn.Module | None, **_: Any
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, planes, 3, stride), BcosBatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), BcosBatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return out + (x if self.downsample is None else self.downsample(x))


class Bottleneck(nn.Module):
    """1 x 1, 3 x 3 (strided, grouped) and 1 x 1 B-cos convolutions with norms, and the shortcut."""

    expansion = 4

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.conv1, self.bn1 = _conv(c_in, width, 1), BcosBatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride, groups), BcosBatchNorm2d(width)
        self.conv3 = _conv(width, planes * 4, 1)
        self.bn3 = BcosBatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class BcosResNet(nn.Module):
    """The zoo's ResNets and ResNeXts, on the encoded 6-channel input, without the logit bias."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = BcosConv2d(6, 64, 7, 2, padding=3, normalize_weights=True)
        self.bn1 = BcosBatchNorm2d(64)
        self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, count in enumerate(layers):
            planes, stride = 64 * 2**index, 1 if index == 0 else 2
            downsample = None
            if stride != 1 or channels != planes * block.expansion:
                downsample = nn.Sequential(
                    _conv(channels, planes * block.expansion, 1, stride),
                    BcosBatchNorm2d(planes * block.expansion),
                )
            blocks = []
            for i in range(count):
                blocks.append(
                    block(
                        channels,
                        planes,
                        stride if i == 0 else 1,
                        downsample if i == 0 else None,
                        groups=groups,
                        width_per_group=width_per_group,
                    )
                )
                channels = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.fc = _conv(channels, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(self.fc(x)).flatten(1)


class _DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = BcosBatchNorm2d(c_in), _conv(c_in, bn_size * growth, 1)
        self.norm2 = BcosBatchNorm2d(bn_size * growth)
        self.conv2 = _conv(bn_size * growth, growth, 3)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.conv2(self.norm2(self.conv1(self.norm1(torch.cat(features, 1)))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, count: int, c_in: int, growth: int, bn_size: int) -> None:
        layers = [_DenseLayer(c_in + i * growth, growth, bn_size) for i in range(count)]
        super().__init__({f"denselayer{i + 1}": layer for i, layer in enumerate(layers)})

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class BcosDenseNet(nn.Module):
    """The zoo's DenseNets, on the encoded 6-channel input, without the logit bias."""

    def __init__(
        self,
        growth: int,
        blocks: Sequence[int],
        init_features: int,
        num_classes: int = 1000,
        bn_size: int = 4,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        stem = BcosConv2d(6, init_features, 7, 2, padding=3, normalize_weights=True)
        self.features.add_module("conv0", stem)
        self.features.add_module("norm0", BcosBatchNorm2d(init_features))
        self.features.add_module("pool0", nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
        channels = init_features
        for index, count in enumerate(blocks):
            block = _DenseBlock(count, channels, growth, bn_size)
            self.features.add_module(f"denseblock{index + 1}", block)
            channels += count * growth
            if index != len(blocks) - 1:
                transition = nn.Sequential()
                transition.add_module("norm", BcosBatchNorm2d(channels))
                transition.add_module("conv", _conv(channels, channels // 2, 1))
                transition.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))
                self.features.add_module(f"transition{index + 1}", transition)
                channels //= 2
        self.features.add_module("norm5", BcosBatchNorm2d(channels))
        self.classifier = _conv(channels, num_classes, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.classifier(self.features(x))).flatten(1)


class BcosVGG(nn.Module):
    """The zoo's VGG-11 with uncentered batch norms (``vgg11_bnu``), without the logit bias."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 6
        for entry in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if entry == "M":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
            else:
                layers += [_conv(channels, int(entry), 3), BcosBatchNorm2d(int(entry))]
                channels = int(entry)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            _conv(512, 4096, 7), _conv(4096, 4096, 1), _conv(4096, num_classes, 1)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.classifier(self.features(x))).flatten(1)


def _resnet(block: type[BasicBlock | Bottleneck], layers: Sequence[int], **fixed: Any):
    return lambda num_classes=1000: BcosResNet(block, layers, num_classes, **fixed)


def _densenet(growth: int, blocks: Sequence[int], init_features: int):
    return lambda num_classes=1000: BcosDenseNet(growth, blocks, init_features, num_classes)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _resnet(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _resnet(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _resnet(Bottleneck, (3, 4, 6, 3)),
    "resnet101": _resnet(Bottleneck, (3, 4, 23, 3)),
    "resnet152": _resnet(Bottleneck, (3, 8, 36, 3)),
    "resnext50_32x4d": _resnet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
    "densenet121": _densenet(32, (6, 12, 24, 16), 64),
    "densenet161": _densenet(48, (6, 12, 36, 24), 96),
    "densenet169": _densenet(32, (6, 12, 32, 32), 64),
    "densenet201": _densenet(32, (6, 12, 48, 32), 64),
    "vgg11_bnu": BcosVGG,
}
"""The zoo's CNNs by their entry-point names in ``bcos.pretrained``."""


class OfficialBcosModel(nn.Module):
    """An official B-cos v2 network with its input encoding and logit bias.

    Takes RGB images in ``[0, 1]``; ``network`` holds the zoo's module paths
    (``model.network.layer4[-1]``), ``logit_bias`` the constant ``-log(C - 1)`` that
    explanations report.

    Example:
        >>> import torch, bcosify
        >>> model = bcosify.models.create("bcos:resnet18", num_classes=10).eval()
        >>> e = bcosify.explain(model, torch.rand(2, 3, 64, 64))
        >>> e.input_contributions.shape, list(e.constants)
        (torch.Size([2, 3, 64, 64]), ['logit_bias.bias'])
    """

    def __init__(self, network: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoding = InputEncoding()
        self.network = network
        self.logit_bias = LogitBias(-math.log(num_classes - 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.logit_bias(self.network(self.encoding(images)))


def build(arch: str, num_classes: int = 1000) -> OfficialBcosModel:
    """The architecture ``arch`` of the zoo with random weights."""
    if arch not in ARCHITECTURES:
        raise ModelSourceError(
            f"the official B-cos model zoo has no CNN {arch!r} that bcosify builds; "
            f"available: {', '.join(ARCHITECTURES)} (ConvNeXt and ViT entries are not supported)"
        )
    if num_classes < 2:
        raise ModelSourceError(f"a B-cos classifier needs at least 2 classes, got {num_classes}")
    return OfficialBcosModel(ARCHITECTURES[arch](num_classes=num_classes), num_classes)


def official_state_dict(model: OfficialBcosModel, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict of the official package, in the keys of ``model``.

    ``<path>.linear.weight`` becomes ``network.<path>.weight``, the batch norms' unused
    ``running_mean`` is dropped and every other key gets the ``network.`` prefix; the logit
    bias, a number in the official model, is ``model``'s own. A state dict already in
    bcosify's keys (saved from an :class:`OfficialBcosModel`) is returned as it is.

    Example:
        >>> model = build("resnet18", num_classes=4)
        >>> state = {"conv1.linear.weight": model.network.conv1.weight,
        ...          "bn1.running_mean": model.network.bn1.running_var}
        >>> sorted(official_state_dict(model, state))
        ['logit_bias.bias', 'network.conv1.weight']
    """
    if any(key.startswith("network.") for key in state):
        return state
    translated = {
        f"network.{key.removesuffix('.linear.weight')}.weight"
        if key.endswith(".linear.weight")
        else f"network.{key}": value
        for key, value in state.items()
        if not key.endswith(".running_mean")
    }
    translated["logit_bias.bias"] = model.logit_bias.bias.detach().clone()
    return translated
