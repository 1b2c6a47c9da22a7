"""The B-cos input encoding ``[x, 1 - x]``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .trace import traced_constant, traced_input

__all__ = ["InputEncoding", "InputNormalization"]


class InputEncoding(nn.Module):
    """Encode images in ``[0, 1]`` as ``[x, 1 - x]`` along the channel dimension.

    A black pixel then still has a non-zero norm, and colours can be read off the dynamic
    weights. During an explanation the encoded tensor is what the explanation is taken with
    respect to: the ``1`` in ``1 - x`` is a constant, so gradients times RGB pixels would not sum
    to the logit, while gradients times the encoded input do.

    Example:
        >>> import torch
        >>> InputEncoding()(torch.zeros(1, 3, 2, 2))[0, :, 0, 0]
        tensor([0., 0., 0., 1., 1., 1.])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        encoded = torch.cat([x, 1.0 - x], dim=self.dim)
        return traced_input(self, encoded, self.fold)

    def fold(self, contributions: Tensor) -> Tensor:
        """Map contributions on ``[x, 1 - x]`` back to the shape of ``x``.

        The contribution of colour channel ``k`` is that of ``x_k`` plus that of ``1 - x_k``, so
        the folded attributions still sum to the same total.

        Example:
            >>> import torch
            >>> InputEncoding().fold(torch.ones(1, 6, 2, 2)).shape
            torch.Size([1, 3, 2, 2])
        """
        direct, inverse = contributions.chunk(2, dim=self.dim)
        return direct + inverse

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, with the offset reported as a named constant.

    This is the normalisation layer of the published ("paper") input encoding. Subtracting the
    mean is an affine offset, not a function of the input: during an explanation it appears as
    the constant term ``<path>.offset``, so completeness stays exact and the share of the logit
    that the offset carries is visible instead of silently lost.

    Example:
        >>> import torch
        >>> norm = InputNormalization([0.5, 0.5], [0.25, 0.25])
        >>> norm(torch.ones(1, 2, 1, 1)).flatten()
        tensor([2., 2.])
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {mean} and {std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        scaled = x / self.std
        return scaled + traced_constant(self, "offset", -self.mean / self.std, scaled)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
