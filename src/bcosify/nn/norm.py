"""Normalisation layers that are dynamic linear in explanation mode.

- :class:`BcosBatchNorm2d` is *uncentered*: ``y = gamma * x / sqrt(var + eps)``. Subtracting the
  mean would add an input-independent offset at inference; the converter folds the mean into
  the bias instead (``beta' = beta - gamma * mu / sqrt(var + eps)``), and the bias is dropped
  by default.
- :class:`BcosLayerNorm`, :class:`BcosGroupNorm` and :class:`BcosLayerNorm2d` stay centred (mean
  subtraction is linear in ``x``) but have no bias by default.

In explanation mode the standard deviation (the variance in batch norm) is detached.
``bias=True`` exists so that a converted model can be checked for exact equivalence with the
original, and for models that keep their biases: an explanation then reports every bias as a
named constant term (``<module path>.bias``), so that completeness stays exact.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mode import ExplanationAware
from .trace import traced_constant

__all__ = [
    "BcosBatchNorm1d",
    "BcosBatchNorm2d",
    "BcosGlobalResponseNorm",
    "BcosGroupNorm",
    "BcosLayerNorm",
    "BcosLayerNorm2d",
    "BcosNormalize",
]


class _AffineNorm(ExplanationAware, nn.Module):
    """Per-channel ``weight`` (and optional ``bias``) shared by every norm here."""

    weight: Tensor | None
    bias: Tensor | None

    def _init_affine(self, num: int, affine: bool, bias: bool, factory: dict[str, Any]) -> None:
        self.register_parameter(
            "weight", nn.Parameter(torch.ones(num, **factory)) if affine else None
        )
        self.register_parameter("bias", nn.Parameter(torch.zeros(num, **factory)) if bias else None)

    def reset_parameters(self) -> None:
        """Scale 1, bias 0 (and unit running variance where there is one)."""
        with torch.no_grad():
            if self.weight is not None:
                self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()
            running_var = getattr(self, "running_var", None)
            if running_var is not None:
                running_var.fill_(1.0)

    def _affine(self, x: Tensor, channel_dim: int) -> Tensor:
        shape = [1] * x.ndim
        shape[channel_dim] = -1
        if self.weight is not None:
            x = x * self.weight.view(shape)
        if self.bias is not None:  # kept: a named constant term of an explanation
            x = x + traced_constant(self, "bias", self.bias.view(shape), x)
        return x

    def _standardise(self, x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
        """``(x - mean) / std`` over ``dims``, with ``std`` detached in explanation mode."""
        centred = x - x.mean(dim=dims, keepdim=True)
        std = (centred.pow(2).mean(dim=dims, keepdim=True) + eps).sqrt()
        return centred / self.detach_if_explaining(std)


_SLICE = 1 << 20  # elements of an input-sized temporary at a time (see _centred_sum_of_squares)


def _centred_sum_of_squares(x: Tensor, mean: Tensor) -> Tensor:
    """``sum((x - mean)^2)`` per channel over ``(N, H, W)``, a few examples at a time.

    Slices of about a million elements keep the temporary ``x - mean`` in cache and its memory
    reused, where an input-sized one needs fresh pages (measured 15 ms against 31 ms for the
    whole batch norm forward of 8 x 256 x 56 x 56, and 10-25% less on smaller inputs).
    """
    step = max(1, _SLICE // max(1, x[0].numel()))
    total = None
    for part in x.split(step, dim=0):
        centred = part - mean.view(1, -1, 1, 1)
        centred.mul_(centred)
        summed = centred.sum(dim=(0, 2, 3))
        total = summed if total is None else total.add_(summed)
    assert total is not None
    return total


def _sum_of_products(
    dy: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor | None, eps: float
) -> Tensor:
    """``sum(dy * x)`` per channel over ``(N, H, W)``.

    Outside differentiated backward passes and vmap, torch's own batch norm backward computes
    ``sum(dy)`` and ``sum(dy * (x - mean))`` in one fused pass without an input-sized
    temporary; ``sum(dy * x)`` is ``sum(dy * (x - mean)) + mean * sum(dy)``.
    """
    if torch.is_grad_enabled() or dy.dtype != x.dtype or weight is None:
        return (dy * x).sum(dim=(0, 2, 3))
    try:
        _, centred, total = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, inv_std, True, eps, [False, True, True]
        )
    except RuntimeError:  # batched gradients (jacobian(..., vectorize=True))
        return (dy * x).sum(dim=(0, 2, 3))
    # native_batch_norm_backward returns the weight gradient sum(dy * (x - mean)) * inv_std
    return centred.div_(inv_std).add_(mean * total)


class _UncenteredBatchNorm(torch.autograd.Function):
    """``y = x * weight / sqrt(var + eps)`` with the batch variance: training-mode batch norm.

    Autograd through ``var`` and the products keeps several input-sized tensors and runs many
    elementwise passes, and ``Tensor.var`` over ``(N, H, W)`` is slow on CPU (measured 21 ms
    against 3 ms for a sum of squares of 8 x 256 x 56 x 56). This function saves only ``x`` and
    two per-channel vectors; with ``r = 1 / sqrt(var + eps)`` and ``s = sum(dy * x)`` per channel
    over the ``M = N H W`` positions:

    - ``dx = weight r dy - weight r^3 s (x - mean) / M`` (the second term vanishes when the
      variance is detached, in explanation mode);
    - ``dweight = r s``.

    Returns ``y`` and the biased batch variance (for the running statistics, not differentiable).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, weight: Tensor | None, eps: float, detach_var: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean = x.mean(dim=(0, 2, 3))
        var = _centred_sum_of_squares(x, mean).div_(x.numel() // x.shape[1])
        inv_std = (var + eps).rsqrt()
        scale = inv_std if weight is None else inv_std * weight
        # mean and inv_std are returned only to be saved for backward (see setup_context)
        return x * scale.view(1, -1, 1, 1), var, mean, inv_std

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, eps, detach_var = inputs
        _, var, mean, inv_std = output
        ctx.mark_non_differentiable(var, mean, inv_std)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.detach_var = detach_var
        ctx.eps = eps

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor | None, *_: Any
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        if dy is None:
            return None, None, None, None
        x, weight, mean, inv_std = ctx.saved_tensors
        if torch.is_grad_enabled():
            # the backward is differentiated: the statistics must depend on x in the graph
            mean = x.mean(dim=(0, 2, 3))
            var = (x - mean.view(1, -1, 1, 1)).square().mean(dim=(0, 2, 3))
            inv_std = (var + ctx.eps).rsqrt()
            if ctx.detach_var:
                inv_std = inv_std.detach()
        channel = (1, -1, 1, 1)
        a = inv_std if weight is None else inv_std * weight
        needs_x, needs_weight = ctx.needs_input_grad[:2]
        s = None
        if needs_weight or not ctx.detach_var:
            s = _sum_of_products(dy, x, mean, inv_std, weight, ctx.eps)
        dweight = s * inv_std if needs_weight and weight is not None else None
        if not needs_x:
            return None, dweight, None, None
        if ctx.detach_var:
            return dy * a.view(channel), dweight, None, None
        assert s is not None
        b = a * inv_std.square() * s / (x.numel() // x.shape[1])
        if torch.is_grad_enabled():  # the backward is differentiated: no in-place passes
            dx = dy * a.view(channel) - (x - mean.view(channel)) * b.view(channel)
        else:
            dx = torch.addcmul((mean * b).view(channel), dy, a.view(channel))
            dx.addcmul_(x, b.view(channel), value=-1.0)
        return dx, dweight, None, None


class BcosBatchNorm2d(_AffineNorm):
    """Uncentered batch norm: ``y = weight * x / sqrt(var + eps) (+ bias)``.

    Training mode uses the batch variance and updates ``running_var``; evaluation uses
    ``running_var``. There is no ``running_mean``: the mean is never subtracted.

    Example:
        >>> import torch
        >>> bn = BcosBatchNorm2d(4).eval()
        >>> x = torch.rand(2, 4, 3, 3)
        >>> torch.allclose(bn(x), x / (1 + 1e-5) ** 0.5)
        True
    """

    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self._init_affine(num_features, affine, bias, factory)
        if track_running_stats:
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_var = None
            self.num_batches_tracked = None

    @classmethod
    def from_batchnorm(
        cls, bn: nn.modules.batchnorm._BatchNorm, *, bias: bool = False
    ) -> BcosBatchNorm2d:
        """Uncentered batch norm with the statistics and scale of ``bn``.

        With ``bias=True`` the mean is folded into the bias so that, in evaluation mode, the
        result computes exactly what ``bn`` computes.

        Example:
            >>> import torch
            >>> _ = torch.manual_seed(0)
            >>> bn = torch.nn.BatchNorm2d(3).eval()
            >>> _ = bn.running_mean.uniform_(), bn.bias.data.uniform_()
            >>> x = torch.rand(2, 3, 4, 4)
            >>> torch.allclose(BcosBatchNorm2d.from_batchnorm(bn, bias=True).eval()(x), bn(x),
            ...                atol=1e-6)
            True
        """
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"from_batchnorm expects a batch norm, got {type(bn).__name__}")
        if bn.running_var is None or bn.running_mean is None:
            raise ValueError(
                "from_batchnorm needs a batch norm with running statistics "
                "(track_running_stats=True); the mean cannot be folded without them"
            )
        ref = bn.running_var
        layer = cls(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=bn.affine,
            bias=bias,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.no_grad():
            assert layer.running_var is not None and layer.num_batches_tracked is not None
            layer.running_var.copy_(bn.running_var)
            if bn.num_batches_tracked is not None:
                layer.num_batches_tracked.copy_(bn.num_batches_tracked)
            gamma = bn.weight if bn.weight is not None else torch.ones_like(ref)
            if layer.weight is not None:
                layer.weight.copy_(gamma)
            if layer.bias is not None:
                beta = bn.bias if bn.bias is not None else torch.zeros_like(ref)
                layer.bias.copy_(beta - gamma * bn.running_mean / (ref + bn.eps).sqrt())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"BcosBatchNorm2d expects a 4-D input (N, C, H, W), got {x.ndim}-D")
        if self.training or self.running_var is None:  # batch statistics
            y, var, _, _ = _UncenteredBatchNorm.apply(x, self.weight, self.eps, self.explaining)
            if self.training and self.running_var is not None:
                self._update_running_var(x, var)
            if self.bias is None:
                return y
            return y + traced_constant(self, "bias", self.bias.view(1, -1, 1, 1), y)
        inv_std = (self.running_var + self.eps).rsqrt()
        return self._affine(x * self.detach_if_explaining(inv_std).view(1, -1, 1, 1), 1)

    @torch.no_grad()
    def _update_running_var(self, x: Tensor, var: Tensor) -> None:
        assert self.running_var is not None and self.num_batches_tracked is not None
        n = x.numel() / x.shape[1]
        unbiased = var * (n / max(n - 1, 1))
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:  # cumulative moving average, as in torch.nn.BatchNorm2d
            momentum = 1.0 / float(self.num_batches_tracked)
        self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.weight is not None}, bias={self.bias is not None}"
        )


class BcosBatchNorm1d(BcosBatchNorm2d):
    """Uncentered batch norm of ``(N, C)`` or ``(N, C, L)`` inputs (``nn.BatchNorm1d``'s: LeViT,
    EfficientViT-MSRA heads): :class:`BcosBatchNorm2d` over them.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> bn = torch.nn.BatchNorm1d(3).eval()
        >>> _ = bn.running_mean.uniform_(), bn.bias.data.uniform_()
        >>> x = torch.rand(2, 3, 5)
        >>> torch.allclose(BcosBatchNorm1d.from_batchnorm(bn, bias=True).eval()(x), bn(x),
        ...                atol=1e-6)
        True
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (2, 3):
            raise ValueError(f"BcosBatchNorm1d expects (N, C) or (N, C, L), got {x.ndim}-D")
        return super().forward(x.reshape(x.shape[0], x.shape[1], -1, 1)).reshape(x.shape)


class BcosLayerNorm(_AffineNorm):
    """Layer norm over the last dimension, centred, without bias by default.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 5, 8)
        >>> torch.allclose(BcosLayerNorm(8)(x), torch.nn.LayerNorm(8, bias=False)(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(normalized_shape, int):
            shape = tuple(normalized_shape)
            if len(shape) != 1:
                raise ValueError(
                    f"BcosLayerNorm normalises the last dimension only, got shape {shape}"
                )
            normalized_shape = shape[0]
        self.normalized_shape = (normalized_shape,)
        self.eps = eps
        self._init_affine(
            normalized_shape, elementwise_affine, bias, {"device": device, "dtype": dtype}
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.explaining:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return self._affine(self._standardise(x, (-1,), self.eps), -1)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


class BcosLayerNorm2d(_AffineNorm):
    """Layer norm over the channels of an ``(N, C, H, W)`` tensor (as in ConvNeXt).

    Example:
        >>> import torch
        >>> BcosLayerNorm2d(4)(torch.rand(2, 4, 3, 3)).mean(1).abs().max() < 1e-5
        tensor(True)
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self._init_affine(num_channels, affine, bias, {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        # channels last in memory in both modes, as F.layer_norm leaves it: the convolutions
        # after it keep that layout, which oneDNN runs faster on CPU (measured: an explanation
        # of timm's convnext_atto took 1.45x one input-gradient pass when only the gradient
        # pass ran channels last); contiguous() copies only where the input is not already
        channels_last = x.permute(0, 2, 3, 1)
        if not self.explaining:
            out = F.layer_norm(
                channels_last, (self.num_channels,), self.weight, self.bias, self.eps
            )
        else:
            out = self._affine(self._standardise(channels_last.contiguous(), (-1,), self.eps), -1)
        return out.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, bias={self.bias is not None}"


class BcosGroupNorm(_AffineNorm):
    """Group norm, centred, without bias by default.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 6, 4, 4)
        >>> ref = torch.nn.GroupNorm(3, 6)
        >>> torch.allclose(BcosGroupNorm(3, 6)(x), ref(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})"
            )
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self._init_affine(num_channels, affine, bias, {"device": device, "dtype": dtype})

    def forward(self, x: Tensor) -> Tensor:
        if not self.explaining:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        grouped = x.unflatten(1, (self.num_groups, -1))
        dims = tuple(range(2, grouped.ndim))
        return self._affine(self._standardise(grouped, dims, self.eps).flatten(1, 2), 1)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, bias={self.bias is not None}"
        )


class BcosGlobalResponseNorm(_AffineNorm):
    """Global response normalisation (ConvNeXt V2) with its normaliser detached when explaining.

    ``y = x + weight * x * n(x) (+ bias)``, where ``n(x) = g / (mean_c g + eps)`` and ``g`` is the
    L2 norm of each channel over the spatial positions. ``n(x)`` depends on the input: in
    explanation mode it is a constant, like a layer norm's standard deviation, so ``y`` is
    linear in ``x``. The bias (beta) is kept only for equivalence checks.

    Args:
        num_features: the channels.
        eps: added to the mean response.
        channels_last: ``(N, H, W, C)`` inputs (timm's ConvNeXt V2 blocks); else ``(N, C, H, W)``.
        bias: keep a bias (then not dynamic linear).

    Example:
        >>> import torch
        >>> grn = BcosGlobalResponseNorm(4)
        >>> torch.equal(grn(torch.ones(2, 3, 3, 4)), torch.ones(2, 3, 3, 4))  # weight 0
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        channels_last: bool = True,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.channels_last = num_features, eps, channels_last
        self._init_affine(num_features, True, bias, {"device": device, "dtype": dtype})
        with torch.no_grad():
            self.weight.zero_()  # the identity, as ConvNeXt V2 initialises it

    def forward(self, x: Tensor) -> Tensor:
        spatial, channel = ((1, 2), -1) if self.channels_last else ((2, 3), 1)
        response = x.pow(2).sum(dim=spatial, keepdim=True).sqrt()
        normaliser = response / (response.mean(dim=channel, keepdim=True) + self.eps)
        return x + self._affine(x * self.detach_if_explaining(normaliser), channel)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, channels_last={self.channels_last}, "
            f"bias={self.bias is not None}"
        )


class BcosNormalize(ExplanationAware, nn.Module):
    """``F.normalize``: ``x / max(||x||_p, eps)`` along ``dim``, the norm detached in explanation
    mode (dynamic linear: ``x`` scaled by a constant). Swin V2's cosine attention, SwiftFormer.

    Example:
        >>> import torch
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(BcosNormalize(dim=-1)(x), torch.nn.functional.normalize(x, dim=-1))
        True
    """

    def __init__(self, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        self.p, self.dim, self.eps = p, dim, eps

    def forward(self, x: Tensor) -> Tensor:
        norm = x.norm(self.p, self.dim, keepdim=True).clamp_min(self.eps)
        return x / self.detach_if_explaining(norm)
