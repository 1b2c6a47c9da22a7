"""Small built-in architectures, available as ``"bcosify:<name>"`` sources.

Plain, torchvision-style networks for the demo and for quick experiments on the built-in data:
nothing in them is special to B-cos, they are converted like any other model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["ARCHITECTURES", "SmallCNN"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages with max pooling, global average pooling and a linear classifier.

    Example:
        >>> import torch
        >>> SmallCNN(num_classes=10)(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for index, width in enumerate(widths):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(x.flatten(1))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"small_cnn": SmallCNN}
