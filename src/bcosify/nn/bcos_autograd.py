"""The arithmetic of the B-cos layers: receptive-field norms, and the fused functions.

:class:`FusedBcosConv2d` and :class:`FusedBcosLinear` compute a B-cos layer without MaxOut
(what B-cosification and B-cos v2 use) as autograd functions with hand-written backward passes:
they keep less memory and run fewer passes than autograd through the formula
(:mod:`bcosify.nn.bcos` has the formula and the layers). ``B = 2`` has a path of its own, where
the scale ``|cos|`` needs no power; any other ``B`` keeps the scale ``|cos|^(B-1)`` from the
forward pass, where autograd through ``pow`` would compute it again, with its logarithm, in the
backward pass (``benchmarks/bench_fused.py``: a training step of an EfficientNet-Lite0 at
B = 1.05 to 1.25 takes 1.5 to 1.7 times as long through autograd). Elementwise passes run one slice
of the batch at a time, so their temporaries stay in cache.

With ``s = |cos|^(B-1)``, ``cos = out / ||x||`` and ``y = out s``: ``dy/dout = B s`` (``s``
when explaining, where the scale is a constant), and the gradient reaching ``r = 1 / ||x||``
is ``(B - 1) y / r``, so the window sum of squares receives ``-(B - 1) r^2 sum(grad y) / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FusedBcosConv2d", "FusedBcosLinear", "Pair", "receptive_field_norm"]

_SQUARES_SLICE = 1 << 20  # elements of x squared at a time, see _sum_of_squares
Pair = tuple[int, int]


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


def receptive_field_norm(
    x: Tensor,
    window: Tensor,
    stride: Pair,
    padding: Pair | str,
    dilation: Pair,
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


def _pointwise(window: Tensor, padding: Pair | str) -> bool:
    """A 1 x 1 window without padding (``'same'`` and ``'valid'`` pad nothing at 1 x 1)."""
    return window.shape[-2:] == (1, 1) and (isinstance(padding, str) or tuple(padding) == (0, 0))


def _window_sum_backward(
    grad: Tensor, window: Tensor, input_size: Sequence[int], conv_args: tuple[Any, ...]
) -> Tensor:
    """Gradient of the ones-kernel window sum of :func:`receptive_field_norm` for its input.

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


def _cos_power(out: Tensor, inverse_norm: Tensor, b: float, groups: int) -> Tensor:
    """``|cos|^(B-1) = (|out| r)^(B-1)``: a fresh tensor, each group's ``r`` broadcast over
    that group's output channels.

    Unclamped: where ``out`` is 0 the scale is 0, and so is ``dy/dout = B |cos|^(B-1)``, its
    limit there (the backward pass never differentiates the power itself).
    """
    power = out.abs()
    _by_group(power, groups).mul_(inverse_norm.unsqueeze(2))
    return power.pow_(b - 1.0)


def _differentiable_power(abs_cos: Tensor, b: float) -> Tensor:
    """``|cos|^(B-1)`` for a backward pass that is itself differentiated: clamped at the
    dtype's smallest normal number, where the power's own derivative is finite (at 0 it is
    not, and ``inf * 0`` is NaN), and its value as good as the limit 0."""
    return abs_cos.clamp_min(torch.finfo(abs_cos.dtype).tiny).pow(b - 1.0)


def _powered_gradient(
    grad: Tensor, out: Tensor, scale: Tensor, inverse_norm: Tensor | None, b: float, groups: int
) -> tuple[Tensor, Tensor | None]:
    """``grad * s`` written over the saved scale ``s = |cos|^(B-1)``, and the gradient through
    ``1 / ||x||``: the general-``B`` counterpart of :func:`_scaled_gradient`.

    The second tensor, ``(B - 1) r^2 sum(grad * y)`` per group (``y = out s``), is what reaches
    the window sum of squares, up to the factor ``-1/2``; None when ``inverse_norm`` is None.
    The factor ``B`` of ``dy/dout`` is left to the caller, which puts it on the weight.
    """
    summed = None if inverse_norm is None else inverse_norm.new_empty(inverse_norm.shape)
    for part in _example_slices(out):
        product = torch.mul(grad[part], scale[part], out=scale[part])
        if inverse_norm is not None and summed is not None:  # both or neither
            r = inverse_norm[part]
            squared = _sum_over_group(product * out[part], groups)
            torch.mul(squared, r, out=summed[part]).mul_(r).mul_(b - 1.0)
    return scale, summed


def _plain_powered_gradient(
    grad: Tensor, out: Tensor, inverse_norm: Tensor, through_norm: bool, b: float, groups: int
) -> tuple[Tensor, Tensor | None]:
    """What :func:`_powered_gradient` computes, in fresh tensors, the scale computed again
    from ``out``; the second tensor only ``through_norm``."""
    grad_out = grad * _cos_power(out, inverse_norm, b, groups)
    if not through_norm:
        return grad_out, None
    return grad_out, _sum_over_group(grad_out * out, groups) * inverse_norm.square() * (b - 1.0)


class FusedBcosConv2d(torch.autograd.Function):
    """``y = out * |out / ||x|| |^(B-1)`` with ``out = conv(x, w)``: the B-cos convolution,
    fused. What follows is the ``B = 2`` path; any other ``B`` also keeps the scale
    ``|cos|^(B-1)`` (a second output-sized tensor, computed once) and writes the gradient for
    the convolution over it instead of over ``out``.

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
        b: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        groups = conv_args[-1]
        inverse_norm = _inverse_norm(x, window, conv_args, eps)
        out = F.conv2d(x, weight, None, *conv_args)
        if b != 2.0:
            scale = _cos_power(out, inverse_norm, b, groups)
            # out, the inverse norm and the scale are returned only to be saved for backward
            return out * scale, out, inverse_norm, scale
        # three whole-tensor passes: one slice at a time was slower here (measured 1.37x
        # against 1.30x the original's ResNet-50 forward)
        y = out.abs()
        _by_group(y, groups).mul_(inverse_norm.unsqueeze(2))
        y.mul_(out)
        return y, out, inverse_norm, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        x, weight, window, conv_args, eps, detach_scale, b = inputs
        _, out, inverse_norm, scale = output
        ctx.mark_non_differentiable(*(t for t in (out, inverse_norm, scale) if t is not None))
        # no zero-filled gradients for the auxiliary outputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, window, out, inverse_norm, scale)
        ctx.conv_args = conv_args
        ctx.eps = eps
        ctx.detach_scale = detach_scale
        ctx.b = b
        ctx.out_spent = False

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        none = (None,) * 5
        need_x, need_weight = ctx.needs_input_grad[:2]
        if grad is None or not (need_x or need_weight):
            return (None, None, *none)
        if torch.is_grad_enabled():
            return (*FusedBcosConv2d._differentiable_backward(ctx, grad), *none)
        x, weight, window, out, inverse_norm, power = ctx.saved_tensors
        conv_args, detach_scale, b = ctx.conv_args, ctx.detach_scale, ctx.b
        stride, padding, dilation, groups = conv_args
        if ctx.out_spent:
            # a second backward through a retained graph: the first one wrote over out (over
            # the scale, when B != 2)
            out = F.conv2d(x, weight, None, *conv_args)
            if power is not None:
                power = _cos_power(out, inverse_norm, b, groups)
        ctx.out_spent = True
        # the scale's own gradient, unless it is a constant
        norm = inverse_norm if need_x and not detach_scale else None
        if power is not None:
            # d y / d out = B |cos|^(B-1) (the constant scale when explaining): B goes onto the
            # weight, much smaller than the output
            factor = 1.0 if detach_scale else b
            plain = (grad, out, inverse_norm, norm is not None, b, groups)
            if torch.compiler.is_compiling():
                # the compiler fuses the passes and plans the memory itself
                grad_out, norm_grad = _plain_powered_gradient(*plain)
            else:
                try:
                    grad_out, norm_grad = _powered_gradient(grad, out, power.data, norm, b, groups)
                except RuntimeError:
                    # batched gradients (jacobian(..., vectorize=True)) cannot be written in
                    # place, and a failed write may have begun on the saved scale
                    grad_out, norm_grad = _plain_powered_gradient(*plain)
        else:
            # d y / d out = 2 |out| r (the constant scale |out| r when explaining). The factor 2
            # goes onto the smaller of r and the weight (the convolution's backward is linear
            # in both): a fresh map the size of a depthwise layer's output costs a pass and
            # page faults
            double_weight = not detach_scale and inverse_norm.numel() > weight.numel()
            factor = 2.0 if double_weight else 1.0
            scale = inverse_norm if detach_scale or double_weight else inverse_norm * 2.0
            if torch.compiler.is_compiling():
                # the compiler fuses the passes and plans the memory itself
                grad_out, norm_grad = _plain_scaled_gradient(grad, out, scale, norm, groups)
            else:
                try:
                    grad_out, norm_grad = _scaled_gradient(grad, out.data, scale, norm, groups)
                except RuntimeError:
                    # batched gradients (jacobian(..., vectorize=True)) cannot be written
                    # into out
                    out = F.conv2d(x, weight, None, *conv_args)
                    grad_out, norm_grad = _plain_scaled_gradient(grad, out, scale, norm, groups)
        mask = (need_x, need_weight, False)
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            weight * factor if factor != 1.0 else weight,  # the weight gradient ignores them
            None,
            stride,
            padding,
            dilation,
            False,
            (0, 0),
            groups,
            mask,
        )
        if factor != 1.0 and grad_weight is not None:
            grad_weight.mul_(factor)
        if norm_grad is not None:
            # d y / d r = (B - 1) y / r and d r / d(window sum) = -r^3 / 2 (norm_grad holds
            # the (B - 1) r^2), and the window sum's gradient reaches x times 2 x
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
        x, weight, window, *_ = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        stride, padding, dilation, groups = conv_args = ctx.conv_args
        b = ctx.b
        out = F.conv2d(x, weight, None, *conv_args)
        norm = receptive_field_norm(x, window, *conv_args, ctx.eps)
        # |out| / ||x||, with each group's norm broadcast over that group's output channels
        scale = (_by_group(out.abs(), groups) / norm.unsqueeze(2)).flatten(1, 2)
        if b != 2.0:
            scale = _differentiable_power(scale, b)
        grad_out = grad * (scale.detach() if ctx.detach_scale else b * scale)
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
                grad_window = -(b - 1.0) * grad_y_times_y / (2.0 * norm.square())
                size = (x.shape[0], groups, *x.shape[2:])
                grad_squares = _window_sum_backward(grad_window, window, size, conv_args)
                grad_x_norm = 2.0 * _by_group(x, groups) * grad_squares.unsqueeze(2)
                grad_x = grad_x + grad_x_norm.flatten(1, 2)
        return grad_x, grad_weight


class FusedBcosLinear(torch.autograd.Function):
    """``y = out * |out / ||x|| |^(B-1)`` with ``out = x W^T``: the B-cos linear layer, fused.

    Autograd through ``abs``, the division and the product runs about a dozen elementwise
    passes over the output in the backward pass (measured: 4 s of the 8.7 s of two training
    steps of torchvision's ConvNeXt-T, whose MLPs are linear layers over 56 x 56 maps). This
    function keeps ``out`` and ``r = 1 / ||x||`` (one value per row; for ``B != 2`` also the
    scale ``s = |out r|^(B-1)``) and computes, with ``G = B s grad`` (``s grad`` when
    explaining):

    - ``dx = G W - (B - 1) x r^2 sum(grad * y)``, the second term only outside explanation
      mode, where ``||x||`` gets a gradient;
    - ``dW = G^T x``.

    When the backward is itself differentiated (``create_graph=True``, ``torch.func``), the same
    formulas run on a recomputed ``out`` with out-of-place operations.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor, weight: Tensor, eps: float, detach_scale: bool, b: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        inverse_norm = (x * x).sum(-1, keepdim=True).add_(eps).rsqrt_()
        out = F.linear(x, weight)
        y = out.abs()
        y.mul_(inverse_norm)
        if b != 2.0:
            scale = y.pow_(b - 1.0)  # unclamped, as _cos_power
            # out, the inverse norm and the scale are returned only to be saved for backward
            return out * scale, out, inverse_norm, scale
        return y.mul_(out), out, inverse_norm, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        x, weight, eps, detach_scale, b = inputs
        _, out, inverse_norm, scale = output
        ctx.mark_non_differentiable(*(t for t in (out, inverse_norm, scale) if t is not None))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, out, inverse_norm, scale)
        ctx.eps = eps
        ctx.detach_scale = detach_scale
        ctx.b = b

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        need_x, need_weight = ctx.needs_input_grad[:2]
        if grad is None or not (need_x or need_weight):
            return None, None, None, None, None
        x, weight, out, inverse_norm, power = ctx.saved_tensors
        b = ctx.b
        norm = need_x and not ctx.detach_scale  # the scale's own gradient, unless a constant
        norm_grad = None
        if torch.is_grad_enabled():
            # the backward is differentiated: out and the norm must be functions of x here
            out = F.linear(x, weight)
            inverse_norm = (x * x).sum(-1, keepdim=True).add(ctx.eps).rsqrt()
            scale = out.abs() * inverse_norm
            if b != 2.0:
                scale = _differentiable_power(scale, b)
            grad_out = grad * (scale.detach() if ctx.detach_scale else b * scale)
            if norm:
                summed = (grad * out * scale).sum(-1, keepdim=True)
                norm_grad = summed * inverse_norm.square() * (b - 1.0)
        else:
            # fresh: batched gradients (vmap) stay batched; at B = 2 the scale is |out| r,
            # and r goes on after the sum
            grad_out = grad * (out.abs() if power is None else power)
            if norm:
                norm_grad = (grad_out * out).sum(-1, keepdim=True)
                norm_grad.mul_(inverse_norm).mul_(inverse_norm)
                norm_grad.mul_(inverse_norm if power is None else b - 1.0)
            if power is None:
                grad_out.mul_(inverse_norm if ctx.detach_scale else inverse_norm * 2.0)
            elif not ctx.detach_scale:
                grad_out.mul_(b)
        grad_x = grad_weight = None
        if need_weight:
            rows = grad_out.reshape(-1, grad_out.shape[-1])
            grad_weight = rows.t() @ x.reshape(-1, x.shape[-1])
        if need_x:
            grad_x = grad_out @ weight
            if norm and torch.is_grad_enabled():
                grad_x = grad_x - x * norm_grad
            elif norm:
                grad_x.addcmul_(x, norm_grad, value=-1.0)
        return grad_x, grad_weight, None, None, None
