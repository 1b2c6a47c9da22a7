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

The common case (``B = 2``, no MaxOut: what B-cosification and B-cos v2 use) runs through
:class:`_BcosConv2dB2` and :class:`_BcosLinearB2`, autograd functions with hand-written
backward passes that keep less memory and run fewer passes; every other case is plain autograd
over the same formula.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t

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


_SQUARES_SLICE = 1 << 20  # elements of x squared at a time, see _sum_of_squares
_Pair = tuple[int, int]


def _example_slices(tensor: Tensor) -> list[slice]:
    """Slices along the batch of about ``_SQUARES_SLICE`` elements each, at least one example.

    Elementwise passes over one slice at a time keep their temporaries in cache and reuse
    their memory, where passes over the whole tensor stream it from memory every time.
    """
    if torch.compiler.is_compiling():
        return [slice(None)]  # the compiler fuses the passes itself
    size = tensor.shape[0]
    step = max(1, _SQUARES_SLICE // max(1, tensor[0].numel()))
    return [slice(start, min(start + step, size)) for start in range(0, size, step)]


def _by_group(tensor: Tensor, groups: int) -> Tensor:
    """View ``(N, C, H, W)`` as ``(N, G, C / G, H, W)``.

    A ``view`` rather than ``unflatten``: it also works on the batched gradients of
    ``torch.autograd.functional.jacobian(..., vectorize=True)``.
    """
    return tensor.view(tensor.shape[0], groups, -1, *tensor.shape[2:])


def _receptive_field_norm(
    x: Tensor,
    window: Tensor,
    stride: _Pair,
    padding: _Pair | str,
    dilation: _Pair,
    groups: int,
    eps: float,
) -> Tensor:
    """``sqrt(sum(x^2) + eps)`` over every receptive field, one map per group: ``(N, G, H', W')``.

    The squares are summed over the group's channels first, then over the window by a
    ones-kernel convolution (``window``, shape ``(G, 1, kh, kw)``) with the layer's geometry.
    """
    squares = _sum_of_squares(x, groups)
    return _window_sum(squares, window, (stride, padding, dilation, groups), eps).sqrt_()


def _inverse_norm(x: Tensor, window: Tensor, conv_args: tuple[Any, ...], eps: float) -> Tensor:
    """``1 / sqrt(sum(x^2) + eps)`` over every receptive field: the fused layer's scale map.

    The reciprocal, because the layer multiplies by it three times (forward, and twice in the
    backward pass) and a product is cheaper than a division; computed in place.
    """
    return _window_sum(_sum_of_squares(x, conv_args[-1]), window, conv_args, eps).rsqrt_()


def _window_sum(squares: Tensor, window: Tensor, conv_args: tuple[Any, ...], eps: float) -> Tensor:
    """``eps`` plus the window sum of ``squares`` (``(N, G, H, W)``): a fresh tensor.

    ``eps`` is the bias of the ones-kernel convolution, so adding it costs no pass of its own.
    """
    stride, padding, dilation, groups = conv_args
    if _pointwise(window, padding):
        # a 1 x 1 window is a strided view: a ones-kernel 1 x 1 convolution with one channel
        # per group is pathologically slow on CPU (measured 6 ms for 32 x 1 x 56 x 56)
        return squares[..., :: stride[0], :: stride[1]] + eps
    bias = window.new_full((groups,), eps)
    return F.conv2d(squares, window, bias, stride, padding, dilation, groups)


def _sum_of_squares(x: Tensor, groups: int) -> Tensor:
    """``x^2`` summed over each group's channels, ``(N, G, H, W)``, a few channels at a time.

    Slices of about a million elements keep the temporary ``x * x`` small, so that it stays in
    cache and its memory is reused; an input-sized temporary needs fresh memory, whose page
    faults on CPU cost more than the arithmetic (measured 5.6 ms against 36 ms for a
    32 x 256 x 56 x 56 input, and never slower on the ResNet-50 shapes). A depthwise layer
    (one channel per group) has nothing to sum: its squares are the map.
    """
    if x.shape[1] == groups:
        return x * x
    grouped = _by_group(x, groups)
    channel_size = grouped.numel() // max(1, grouped.shape[2])
    step = max(1, _SQUARES_SLICE // max(1, channel_size))
    first, *rest = grouped.split(step, dim=2)
    total = (first * first).sum(2)
    for part in rest:
        total = total + (part * part).sum(2)
    return total


def _sum_over_group(tensor: Tensor, groups: int) -> Tensor:
    """``(N, C, H, W)`` summed over each group's channels: ``(N, G, H, W)``.

    A depthwise layer's tensor is returned as it is: a sum over one channel would cost a pass
    (measured: as much as the layer's squares).
    """
    if tensor.shape[1] == groups:
        return tensor
    return _by_group(tensor, groups).sum(2)


def _pointwise(window: Tensor, padding: _Pair | str) -> bool:
    """A 1 x 1 window without padding (``'same'`` and ``'valid'`` pad nothing at 1 x 1)."""
    return window.shape[-2:] == (1, 1) and (isinstance(padding, str) or tuple(padding) == (0, 0))


def _window_sum_backward(
    grad: Tensor, window: Tensor, input_size: Sequence[int], conv_args: tuple[Any, ...]
) -> Tensor:
    """Gradient of the ones-kernel window sum of :func:`_receptive_field_norm` for its input.

    At stride 1 the adjoint of a ones-kernel correlation is the same correlation with the
    complementary padding ``dilation * (k - 1) - padding`` (the kernel is its own flip). On CPU
    that is much faster than the generic transposed convolution with one channel per group
    (measured 0.3 ms against 7 ms for 32 x 1 x 56 x 56), so it is used wherever it applies.
    Otherwise a transposed convolution, which beats ``conv2d_input`` (the convolution's own
    backward) with many groups (measured 3.4 ms against 4.0 ms, and 0.7 against 1.1 ms, for
    depthwise 3 x 3 and 5 x 5 layers at stride 2).
    """
    stride, padding, dilation, groups = conv_args
    if stride == (1, 1) and _pointwise(window, padding):
        return grad
    kernel = window.shape[-2:]
    flipped = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding, strict=True))
    if stride == (1, 1) and min(flipped) >= 0:
        return F.conv2d(grad, window, None, 1, flipped, dilation, groups)
    extra = tuple(
        size - ((g - 1) * s - 2 * p + d * (k - 1) + 1)
        for size, g, s, p, d, k in zip(
            input_size[-2:], grad.shape[-2:], stride, padding, dilation, kernel, strict=True
        )
    )
    return F.conv_transpose2d(grad, window, None, stride, padding, extra, groups, dilation)


def _scaled_gradient(
    grad: Tensor, out: Tensor, scale: Tensor, inverse_norm: Tensor | None, groups: int
) -> tuple[Tensor, Tensor | None]:
    """``grad * |out| * scale`` written over ``out``, and the gradient through ``1 / ||x||``.

    The gradient for the convolution goes into ``out``'s memory, which nothing needs after the
    backward pass: a fresh output-sized tensor costs page faults on CPU (measured: as much as
    the rest of the layer's extra work on ResNet-50's 56 x 56 layers). The passes run one
    slice of the batch at a time (:func:`_example_slices`), so that a depthwise layer's
    output-sized ``r^3`` factor is applied in cache too.

    The second tensor, ``sum(grad * out * |out|) * r^3`` per group with ``r`` the
    ``inverse_norm`` (``(N, G, H', W')``), is what reaches the window sum of squares, up to
    the factor ``-1/2``; None when ``inverse_norm`` is None (the scale is a constant).
    """
    summed = None if inverse_norm is None else inverse_norm.new_empty(inverse_norm.shape)
    for part in _example_slices(out):
        out_part = out[part]
        product = out_part.abs().mul_(grad[part])
        if inverse_norm is not None and summed is not None:  # both or neither
            r = inverse_norm[part]
            squared = _sum_over_group(product * out_part, groups)
            torch.mul(squared, r, out=summed[part]).mul_(r).mul_(r)
        torch.mul(
            _by_group(product, groups), scale[part].unsqueeze(2), out=_by_group(out_part, groups)
        )
    return out, summed


def _plain_scaled_gradient(
    grad: Tensor, out: Tensor, scale: Tensor, inverse_norm: Tensor | None, groups: int
) -> tuple[Tensor, Tensor | None]:
    """What :func:`_scaled_gradient` computes, in fresh tensors and without slices."""
    grad_out = grad * out.abs()
    summed = None
    if inverse_norm is not None:
        summed = _sum_over_group(grad_out * out, groups) * inverse_norm.pow(3)
    _by_group(grad_out, groups).mul_(scale.unsqueeze(2))
    return grad_out, summed


class _BcosConv2dB2(torch.autograd.Function):
    """``y = out * |out| / ||x||`` with ``out = conv(x, w)``: the B = 2 convolution, fused.

    Autograd through ``abs``, the division and the product keeps three output-sized tensors
    for the backward pass and spends most of the layer's extra time in elementwise passes and
    in a slow one-channel transposed convolution. This function keeps only ``out`` and the
    small map ``r = 1 / ||x||``, and computes the backward by hand with in-place passes:

    - ``dy/dout = 2 |out| r`` (``|out| r`` in explanation mode, where the scale is a constant
      and ``||x||`` gets no gradient);
    - ``dy/d||x|| = -y r``, summed over the group's output channels, then through the square
      root and the window sum to ``2 x`` times the window-summed gradient.

    Every elementwise pass over an output- or input-sized tensor costs about as much as the
    arithmetic of a depthwise convolution, and every fresh output-sized tensor costs page
    faults on CPU, so both are counted. The forward makes one fresh tensor (``y``) in three
    passes (``|out|``, ``* r``, ``* out``); the backward makes none beyond the convolution's own
    gradients: it writes the gradient for the convolution over ``out`` (see
    :func:`_scaled_gradient`), and a second backward through a retained graph recomputes
    ``out`` from the saved input and weight. Under ``torch.compile`` the compiler fuses the
    passes and plans the memory, so the plain formulas run there.

    When the backward is itself differentiated (``create_graph=True``, ``torch.func``), the same
    formulas run without in-place passes (:meth:`_differentiable_backward`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor,
        weight: Tensor,
        window: Tensor,
        conv_args: tuple[Any, ...],
        eps: float,
        detach_scale: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        groups = conv_args[-1]
        inverse_norm = _inverse_norm(x, window, conv_args, eps)
        out = F.conv2d(x, weight, None, *conv_args)
        # three whole-tensor passes: one slice at a time was slower here (measured 1.37x
        # against 1.30x the original's ResNet-50 forward)
        y = out.abs()
        _by_group(y, groups).mul_(inverse_norm.unsqueeze(2))
        y.mul_(out)
        # out and the inverse norm are returned only to be saved for backward (setup_context)
        return y, out, inverse_norm

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, window, conv_args, eps, detach_scale = inputs
        _, out, inverse_norm = output
        ctx.mark_non_differentiable(out, inverse_norm)
        # no zero-filled gradients for the auxiliary outputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, window, out, inverse_norm)
        ctx.conv_args = conv_args
        ctx.eps = eps
        ctx.detach_scale = detach_scale
        ctx.out_spent = False

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        none = (None,) * 4
        need_x, need_weight = ctx.needs_input_grad[:2]
        if grad is None or not (need_x or need_weight):
            return (None, None, *none)
        if torch.is_grad_enabled():
            return (*_BcosConv2dB2._differentiable_backward(ctx, grad), *none)
        x, weight, window, out, inverse_norm = ctx.saved_tensors
        conv_args, detach_scale = ctx.conv_args, ctx.detach_scale
        stride, padding, dilation, groups = conv_args
        if ctx.out_spent:
            # a second backward through a retained graph: the first one wrote over out
            out = F.conv2d(x, weight, None, *conv_args)
        ctx.out_spent = True
        # d y / d out = 2 |out| r (the constant scale |out| r when explaining). The factor 2
        # goes onto the smaller of r and the weight (the convolution's backward is linear in
        # both): a fresh map the size of a depthwise layer's output costs a pass and page faults
        double_weight = not detach_scale and inverse_norm.numel() > weight.numel()
        scale = inverse_norm if detach_scale or double_weight else inverse_norm * 2.0
        # the scale's own gradient, unless it is a constant
        norm = inverse_norm if need_x and not detach_scale else None
        if torch.compiler.is_compiling():
            # the compiler fuses the passes and plans the memory itself
            grad_out, norm_grad = _plain_scaled_gradient(grad, out, scale, norm, groups)
        else:
            try:
                grad_out, norm_grad = _scaled_gradient(grad, out.data, scale, norm, groups)
            except RuntimeError:
                # batched gradients (jacobian(..., vectorize=True)) cannot be written into out
                out = F.conv2d(x, weight, None, *conv_args)
                grad_out, norm_grad = _plain_scaled_gradient(grad, out, scale, norm, groups)
        mask = (need_x, need_weight, False)
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            weight * 2.0 if double_weight else weight,  # the weight gradient ignores its values
            None,
            stride,
            padding,
            dilation,
            False,
            (0, 0),
            groups,
            mask,
        )
        if double_weight and grad_weight is not None:
            grad_weight.mul_(2.0)
        if norm_grad is not None:
            # d y / d r = out |out| and d r / d(window sum) = -r^3 / 2 (norm_grad holds the
            # r^3), and the window sum's gradient reaches x times 2 x
            grad_squares = _window_sum_backward(
                norm_grad, window, (x.shape[0], groups, *x.shape[2:]), conv_args
            )
            _by_group(grad_x, groups).addcmul_(
                _by_group(x, groups), grad_squares.unsqueeze(2), value=-1.0
            )
        return (grad_x, grad_weight, *none)

    @staticmethod
    def _differentiable_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The same backward with out-of-place operations on a recomputed ``out`` and norm.

        Used when the backward itself is differentiated (``create_graph=True``, ``torch.func``
        transforms): the saved ``out`` and norm carry no graph, and in-place passes would
        hide operations from autograd.
        """
        x, weight, window, _, _ = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        stride, padding, dilation, groups = conv_args = ctx.conv_args
        out = F.conv2d(x, weight, None, *conv_args)
        norm = _receptive_field_norm(x, window, *conv_args, ctx.eps)
        # |out| / ||x||, with each group's norm broadcast over that group's output channels
        scale = (_by_group(out.abs(), groups) / norm.unsqueeze(2)).flatten(1, 2)
        grad_out = grad * (scale.detach() if ctx.detach_scale else 2.0 * scale)
        grad_x = grad_weight = None
        if need_weight:
            grad_weight = torch.nn.grad.conv2d_weight(
                x, weight.shape, grad_out, stride, padding, dilation, groups
            )
        if need_x:
            grad_x = torch.nn.grad.conv2d_input(
                x.shape, weight, grad_out, stride, padding, dilation, groups
            )
            if not ctx.detach_scale:
                grad_y_times_y = _by_group(grad * out * scale, groups).sum(2)
                grad_window = -grad_y_times_y / (2.0 * norm.square())
                size = (x.shape[0], groups, *x.shape[2:])
                grad_squares = _window_sum_backward(grad_window, window, size, conv_args)
                grad_x_norm = 2.0 * _by_group(x, groups) * grad_squares.unsqueeze(2)
                grad_x = grad_x + grad_x_norm.flatten(1, 2)
        return grad_x, grad_weight


class _BcosLinearB2(torch.autograd.Function):
    """``y = out * |out| / ||x||`` with ``out = x W^T``: the B = 2 linear layer, fused.

    Autograd through ``abs``, the division and the product runs about a dozen elementwise
    passes over the output in the backward pass (measured: 4 s of the 8.7 s of two training
    steps of torchvision's ConvNeXt-T, whose MLPs are linear layers over 56 x 56 maps). This
    function keeps ``out`` and ``r = 1 / ||x||`` (one value per row) and computes, with
    ``G = 2 |out| r grad`` (``|out| r grad`` when explaining):

    - ``dx = G W - x r^3 sum(grad * out * |out|)``, the second term only outside explanation
      mode, where ``||x||`` gets a gradient;
    - ``dW = G^T x``.

    When the backward is itself differentiated (``create_graph=True``, ``torch.func``), the same
    formulas run on a recomputed ``out`` with out-of-place operations.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, weight: Tensor, eps: float, detach_scale: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        inverse_norm = (x * x).sum(-1, keepdim=True).add_(eps).rsqrt_()
        out = F.linear(x, weight)
        y = out.abs()
        y.mul_(inverse_norm).mul_(out)
        # out and the inverse norm are returned only to be saved for backward (setup_context)
        return y, out, inverse_norm

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, eps, detach_scale = inputs
        _, out, inverse_norm = output
        ctx.mark_non_differentiable(out, inverse_norm)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, out, inverse_norm)
        ctx.eps = eps
        ctx.detach_scale = detach_scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        need_x, need_weight = ctx.needs_input_grad[:2]
        if grad is None or not (need_x or need_weight):
            return None, None, None, None
        x, weight, out, inverse_norm = ctx.saved_tensors
        norm = need_x and not ctx.detach_scale  # the scale's own gradient, unless a constant
        differentiated = torch.is_grad_enabled()
        norm_grad = None
        if differentiated:
            # the backward is differentiated: out and the norm must be functions of x here
            out = F.linear(x, weight)
            inverse_norm = (x * x).sum(-1, keepdim=True).add(ctx.eps).rsqrt()
            abs_out = out.abs()
            scale = abs_out * inverse_norm
            grad_out = grad * (scale.detach() if ctx.detach_scale else 2.0 * scale)
            if norm:
                norm_grad = (grad * out * abs_out).sum(-1, keepdim=True) * inverse_norm.pow(3)
        else:
            grad_out = grad * out.abs()  # fresh: batched gradients (vmap) stay batched
            if norm:
                norm_grad = (grad_out * out).sum(-1, keepdim=True)
                norm_grad.mul_(inverse_norm).mul_(inverse_norm).mul_(inverse_norm)
            grad_out.mul_(inverse_norm if ctx.detach_scale else inverse_norm * 2.0)
        grad_x = grad_weight = None
        if need_weight:
            rows = grad_out.reshape(-1, grad_out.shape[-1])
            grad_weight = rows.t() @ x.reshape(-1, x.shape[-1])
        if need_x:
            grad_x = grad_out @ weight
            if norm and differentiated:
                grad_x = grad_x - x * norm_grad
            elif norm:
                grad_x.addcmul_(x, norm_grad, value=-1.0)
        return grad_x, grad_weight, None, None


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
        """Whether the fused B = 2 function (:class:`_BcosConv2dB2`, :class:`_BcosLinearB2`)
        computes this call.

        Under autocast the plain autograd path runs instead: it lets autocast pick each
        operation's precision and casts the gradients back, exactly as before. So it does on
        the ``meta`` device (shapes only, as when a saved model's config is checked).
        """
        plain = self.b != 2.0 or self.max_out != 1 or x.is_meta
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
            y, _, _ = _BcosConv2dB2.apply(
                x, weight, self._window, conv_args, self.eps, self.explaining
            )
            return y
        out = F.conv2d(x, weight, None, self.stride, padding, self.dilation, self.groups)
        norm = None if self.b == 1.0 else self._input_norm(x, padding)
        return self._bcos(out, norm, unit_dim=1)

    def _explicit_padding(self, x: Tensor) -> tuple[Tensor, _Pair]:
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
        norm = _receptive_field_norm(
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
            y, _, _ = _BcosLinearB2.apply(x, self._weight(), self.eps, self.explaining)
            return y
        out = F.linear(x, self._weight())
        norm = None if self.b == 1.0 else ((x * x).sum(-1, keepdim=True) + self.eps).sqrt()
        return self._bcos(out, norm, unit_dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._bcos_extra_repr()}"
