"""B-cos linear and convolutional layers.

For a unit with weight ``w`` applied to an input patch ``x``::

    y = (w . x) * | (w . x) / ||x|| |^(B-1)                   normalize_weights=False
    y = (v . x) * | (v . x) / ||x|| |^(B-1),  v = w / ||w||   normalize_weights=True

with ``||x|| = sqrt(sum(x^2) + eps)`` over the unit's whole receptive field (for a convolution:
the k x k window over all input channels of the group; zero padding counts as zeros). ``eps``
inside the square root keeps the gradient finite where a window is all zeros. ``B = 1`` is
exactly the plain layer on the same weights. With ``max_out = M`` each unit has ``M`` weight
rows and keeps the one with the largest linear output ``w . x`` (``v . x``) before the scaling.

``normalize_weights=True`` is the published B-cos v2 layer (Böhle et al., TPAMI 2024): every weight
row is divided by its norm before it is applied, so a unit's output is ``||x|| cos^B`` with the
sign of the cosine, whatever the scale of its weights; official B-cos v2 checkpoints load into it.

In explanation mode the scaling factor ``|...|^(B-1)`` is detached, so ``y`` is linear in ``x``.

Without MaxOut (what B-cosification and B-cos v2 use) a layer at ``B != 1`` runs through
:class:`FusedBcosConv2d` and :class:`FusedBcosLinear`, autograd functions with hand-written
backward passes that keep less memory and run fewer passes; MaxOut, autocast and ``B = 1``
(the plain layer) are plain autograd over the same formula.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t

from .bcos_autograd import FusedBcosConv2d, FusedBcosLinear, Pair, receptive_field_norm
from .mode import ExplanationAware

__all__ = ["MAX_B", "BcosConv2d", "BcosLinear", "check_b"]

MAX_B = 10.0
"""The largest B bcosify accepts: the published models use 2 and the design studies up to about
3; beyond 10 every unit's output is ``|cos|^(B - 1)`` of almost nothing, so the network's output
is its constants alone."""

_EPS = 1e-6


def check_b(b: object, error: type[Exception] = ValueError) -> float:
    """``b`` as a float, or ``error`` when it is not a number from 1 to :data:`MAX_B`.

    Example:
        >>> check_b(2)
        2.0
        >>> check_b(float("inf"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: b must be a number from 1 to 10 (1 is the plain linear layer, ...), got inf
    """
    value = float(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else math.nan
    if not 1.0 <= value <= MAX_B:
        raise error(
            f"b must be a number from 1 to {MAX_B:g} (1 is the plain linear layer, 2 the usual "
            f"B-cos setting), got {b!r}"
        )
    return value


class _BcosUnit(ExplanationAware):
    """What B-cos convolution and linear layers share: options, MaxOut and the scaling."""

    weight: Tensor
    b: float
    max_out: int
    normalize_weights: bool
    eps: float

    def _init_bcos(self, b: float, max_out: int, normalize_weights: bool, eps: float) -> None:
        check_b(b)
        if int(max_out) != max_out or max_out < 1:
            raise ValueError(f"max_out must be a positive integer, got {max_out}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.b = float(b)
        self.max_out = int(max_out)
        self.normalize_weights = bool(normalize_weights)
        self.eps = float(eps)

    def _weight(self) -> Tensor:
        """The weight the unit applies: ``weight``, or each row divided by its norm."""
        if not self.normalize_weights:
            return self.weight
        norm = self.weight.flatten(1).norm(dim=1)
        return self.weight / norm.view(-1, *(1,) * (self.weight.ndim - 1))

    def _bcos(self, linear_out: Tensor, input_norm: Tensor | None, unit_dim: int) -> Tensor:
        """Apply MaxOut and the B-cos scaling to the raw linear output (units along ``unit_dim``).

        ``input_norm`` may be None when ``b == 1``: the scaling is then exactly 1.
        """
        d = unit_dim % linear_out.ndim
        if self.max_out > 1:
            out = linear_out.unflatten(d, (-1, self.max_out)).max(dim=d + 1).values
        else:
            out = linear_out
        if input_norm is None:
            return out
        abs_cos = out.abs() / input_norm
        # the fast path at B = 2; the clamp keeps the derivative of |cos|^(B-1) finite at 0
        scale = abs_cos if self.b == 2.0 else abs_cos.clamp_min(1e-12).pow(self.b - 1.0)
        return out * self.detach_if_explaining(scale)

    def _fused(self, x: Tensor) -> bool:
        """Whether the fused function (:class:`FusedBcosConv2d`, :class:`FusedBcosLinear`)
        computes this call: any ``B`` but 1, without MaxOut.

        Under autocast the plain autograd path runs instead: it lets autocast pick each
        operation's precision and casts the gradients back, exactly as before. So it does on
        the ``meta`` device (shapes only, as when a saved model's config is checked).
        """
        plain = self.b == 1.0 or self.max_out != 1 or x.is_meta
        return not plain and not torch.is_autocast_enabled(x.device.type)

    def _bcos_extra_repr(self) -> str:
        return f"b={self.b:g}, max_out={self.max_out}, normalize_weights={self.normalize_weights}"


class BcosConv2d(_BcosUnit, nn.Conv2d):
    """B-cos 2-D convolution: ``nn.Conv2d`` without bias, followed by the B-cos scaling.

    Takes every argument of ``nn.Conv2d`` except ``bias``; ``out_channels`` counts units, and
    with ``max_out = M`` the ``weight`` has ``M * out_channels`` rows. The state-dict key stays
    ``weight``, so pretrained convolution weights load directly.

    Example:
        >>> import torch
        >>> conv = BcosConv2d(6, 8, kernel_size=3, padding=1, b=2.0)
        >>> conv(torch.rand(2, 6, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2_t,
        stride: _size_2_t = 1,
        padding: _size_2_t | str = 0,
        dilation: _size_2_t = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        b: float = 2.0,
        max_out: int = 1,
        normalize_weights: bool = False,
        eps: float = _EPS,
    ) -> None:
        self._init_bcos(b, max_out, normalize_weights, eps)
        if out_channels % groups != 0:
            raise ValueError(
                f"out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        super().__init__(
            in_channels,
            out_channels * self.max_out,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.out_channels = out_channels
        self.register_buffer(
            "_window",
            torch.ones(groups, 1, *self.kernel_size, device=device, dtype=dtype),
            persistent=False,
        )

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        *,
        b: float = 2.0,
        normalize_weights: bool = False,
        eps: float = _EPS,
    ) -> BcosConv2d:
        """Build a B-cos convolution with the same geometry and weights as ``conv``.

        The bias of ``conv`` is not carried over (B-cos layers have none).

        Example:
            >>> import torch
            >>> conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
            >>> bconv = BcosConv2d.from_conv(conv, b=1.0)
            >>> x = torch.rand(1, 3, 8, 8)
            >>> torch.allclose(bconv(x), conv(x) - conv.bias[:, None, None], atol=1e-6)
            True
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv expects an nn.Conv2d, got {type(conv).__name__}")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            b=b,
            normalize_weights=normalize_weights,
            eps=eps,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        padding: Any = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        weight = self._weight()
        if self._fused(x):
            if isinstance(padding, str):
                x, padding = self._explicit_padding(x)
            conv_args = (self.stride, padding, self.dilation, self.groups)
            y, *_ = FusedBcosConv2d.apply(
                x, weight, self._window, conv_args, self.eps, self.explaining, self.b
            )
            return y
        out = F.conv2d(x, weight, None, self.stride, padding, self.dilation, self.groups)
        norm = None if self.b == 1.0 else self._input_norm(x, padding)
        return self._bcos(out, norm, unit_dim=1)

    def _explicit_padding(self, x: Tensor) -> tuple[Tensor, Pair]:
        """Numbers for ``padding='valid'`` / ``'same'`` (the fused path needs them).

        An odd total 'same' padding is uneven; the input is then zero-padded explicitly, as
        ``F.conv2d`` does internally.
        """
        if self.padding == "valid":
            return x, (0, 0)
        left_w, right_w, left_h, right_h = self._reversed_padding_repeated_twice
        if (left_w, left_h) == (right_w, right_h):
            return x, (left_h, left_w)
        return F.pad(x, self._reversed_padding_repeated_twice), (0, 0)

    def _input_norm(self, x: Tensor, padding: Any) -> Tensor:
        """||x|| of every receptive field, shaped to broadcast against the output units."""
        groups = self.groups
        norm = receptive_field_norm(
            x, self._window, self.stride, padding, self.dilation, groups, self.eps
        )
        if groups == 1:
            return norm
        # each group's norm serves that group's output units
        return norm.repeat_interleave(self.out_channels // groups, dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._bcos_extra_repr()}"


class BcosLinear(_BcosUnit, nn.Linear):
    """B-cos linear layer: ``nn.Linear`` without bias, followed by the B-cos scaling.

    ``||x||`` is the norm over the last dimension. With ``max_out = M`` the ``weight`` has
    ``M * out_features`` rows; the state-dict key stays ``weight``.

    Example:
        >>> import torch
        >>> BcosLinear(6, 3, b=2.0)(torch.rand(4, 6)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        device: Any = None,
        dtype: Any = None,
        *,
        b: float = 2.0,
        max_out: int = 1,
        normalize_weights: bool = False,
        eps: float = _EPS,
    ) -> None:
        self._init_bcos(b, max_out, normalize_weights, eps)
        super().__init__(
            in_features, out_features * self.max_out, bias=False, device=device, dtype=dtype
        )
        self.out_features = out_features

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        b: float = 2.0,
        normalize_weights: bool = False,
        eps: float = _EPS,
    ) -> BcosLinear:
        """Build a B-cos linear layer with the same weights as ``linear`` (bias dropped).

        Example:
            >>> import torch
            >>> linear = torch.nn.Linear(5, 2, bias=False)
            >>> x = torch.rand(3, 5)
            >>> torch.allclose(BcosLinear.from_linear(linear, b=1.0)(x), linear(x))
            True
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear, got {type(linear).__name__}")
        layer = cls(
            linear.in_features,
            linear.out_features,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            b=b,
            normalize_weights=normalize_weights,
            eps=eps,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if self._fused(x):
            y, *_ = FusedBcosLinear.apply(x, self._weight(), self.eps, self.explaining, self.b)
            return y
        out = F.linear(x, self._weight())
        norm = None if self.b == 1.0 else ((x * x).sum(-1, keepdim=True) + self.eps).sqrt()
        return self._bcos(out, norm, unit_dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._bcos_extra_repr()}"
