"""Layer-wise reconstruction: B-cos layers solved in closed form to reproduce the original's.

What :func:`bcosify.calibrate` does with ``method="layers"``. Post-training quantization
fits each quantized layer to the full-precision layer's output, in order, on what the
quantized network passes it (so that each layer makes up for the errors before it); the same
works for B-cosification, because a B-cos unit's output

    y = z |z| ^ (B-1) / ||x|| ^ (B-1),    z = w . x

is a monotone function of its linear output ``z`` for a given input ``x``: the original's
output ``t`` at the same path gives the linear output the unit needs,
``z* = sign(t) (|t| ||x|| ^ (B-1)) ^ (1/B)``, and the weight is the ridge least-squares
solution of ``w . x = z*`` over every position of every image, pulled towards the original's
weight. Each group of a grouped convolution is its own problem (a depthwise convolution: one
small problem per channel).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError
from ..nn import BcosConv2d, BcosLinear
from .rules import Biased

__all__ = ["fit_layers", "run_side_by_side"]

# numbers per chunk of unfolded patches (128 MiB in float64): bounds the memory of the sums
_CHUNK = 1 << 24


def run_side_by_side(
    model: nn.Module, original: nn.Module, batches: list[Tensor], after: Callable[[], None]
) -> None:
    """For every batch, the original (in evaluation mode, on the batch normalised as ``model``
    normalises its input), then ``model``, then ``after()``; hooks do the fitting."""
    options = getattr(getattr(model, "config", None), "options", None)
    mean = torch.tensor(getattr(options, "input_mean", (0.0,))).view(1, -1, 1, 1)
    std = torch.tensor(getattr(options, "input_std", (1.0,))).view(1, -1, 1, 1)
    was_training = original.training
    original.eval()
    try:
        for batch in batches:
            original((batch - mean.to(batch)) / std.to(batch))
            model(batch)
            after()
    finally:
        original.train(was_training)


@dataclass
class _Problem:
    """One B-cos layer's least-squares problem: the sums over the batches so far."""

    layer: BcosConv2d | BcosLinear
    source: nn.Module
    bias: Tensor | None  # the original's bias, which the kept Biased wrapper adds back
    start: Tensor  # the weight the ridge pulls towards (the original's, as converted)
    gram: Tensor | None = None
    moment: Tensor | None = None
    received: list[Tensor] = field(default_factory=list)
    # the patches and linear outputs themselves while there are fewer than inputs per unit:
    # then the solve is the same ridge solution in the (smaller) space of the samples
    samples: list[tuple[Tensor, Tensor]] | None = field(default_factory=list)


def fit_layers(
    model: nn.Module,
    original: nn.Module,
    batches: list[Tensor],
    ridge: float,
    only: Collection[str] | None = None,
) -> tuple[int, tuple[str, ...]]:
    """Fit every B-cos layer of ``model`` with a counterpart in ``original`` (see the module
    docstring), or those at the paths ``only``; returns how many were fitted and why the
    others were not."""
    network = getattr(model, "network", model)
    problems: dict[str, _Problem] = {}
    skipped: list[str] = []
    for path, layer in network.named_modules():
        if not isinstance(layer, (BcosConv2d, BcosLinear)):
            continue
        if only is not None and path not in only:
            continue
        why = _unfittable(layer)
        found = _counterpart(original, network, path, layer) if why is None else None
        if why is None and found is None:
            why = "no layer with as many units at its path in the original"
        if why is not None:
            skipped.append(f"{path}: {why}")
            continue
        assert found is not None
        source, bias = found
        start = layer.weight.detach().double().clone()
        problems[path] = _Problem(layer, source, bias, start)
    if not problems:
        raise UsageError(
            "method='layers' needs B-cos layers with counterparts at the same paths in the "
            "original (the converted network keeps the original's module paths)"
        )

    def keep(problem: _Problem) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            out = output.detach()
            if problem.bias is not None:
                shape = [1] * out.ndim
                shape[1 if isinstance(problem.layer, BcosConv2d) else -1] = -1
                out = out - problem.bias.view(shape)
            problem.received.append(out)

        return hook

    def fit(path: str, problem: _Problem) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            target = problem.received.pop(0) if problem.received else None
            if target is None or not _accumulate(problem, args[0], target):
                skipped.append(f"{path}: its output does not match the original's in shape")
                del problems[path]
                handles.pop(path).remove()
                teacher.pop(path).remove()
                return
            _solve(problem, ridge)

        return hook

    def forget() -> None:
        for problem in problems.values():
            problem.received.clear()

    handles = {p: q.layer.register_forward_pre_hook(fit(p, q)) for p, q in problems.items()}
    teacher = {p: q.source.register_forward_hook(keep(q)) for p, q in problems.items()}
    try:
        with torch.no_grad():
            run_side_by_side(model, original, batches, forget)
    finally:
        for handle in [*handles.values(), *teacher.values()]:
            handle.remove()
    return len(problems), tuple(skipped)


def _unfittable(layer: BcosConv2d | BcosLinear) -> str | None:
    if layer.max_out > 1:
        return "MaxOut units (max_out > 1) have no single linear output to solve for"
    if layer.normalize_weights:
        return "normalised weights (normalize_weights=True) fix the scale a fit would set"
    if getattr(layer, "pads_in_forward", False):
        return "it pads its input itself (TensorFlow 'same' padding): not unfolded"
    if isinstance(layer, BcosConv2d) and layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r}: only zero padding is unfolded"
    return None


def _counterpart(
    original: nn.Module, network: nn.Module, path: str, layer: BcosConv2d | BcosLinear
) -> tuple[nn.Module, Tensor | None] | None:
    """The original's layer at ``path`` and the bias to take off its output: its own, when the
    converted layer sits in a :class:`Biased` wrapper at the original layer's path (the
    wrapper adds it back), else None (a bias the original layer has stays in its output)."""
    parent, _, name = path.rpartition(".")
    wrapped = name == "layer" and isinstance(network.get_submodule(parent), Biased)
    try:
        source = original.get_submodule(parent if wrapped else path)
    except AttributeError:
        return None
    weight = getattr(source, "weight", None)
    # the units, not the whole shape: the first layer's input is encoded ([x, 1 - x]), and a
    # linear classifier may have become a 1 x 1 convolution
    if not isinstance(weight, Tensor) or weight.shape[0] != layer.weight.shape[0]:
        return None
    bias = getattr(source, "bias", None) if wrapped else None
    return source, bias.detach() if isinstance(bias, Tensor) else None


def _groups(layer: BcosConv2d | BcosLinear, x: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """The patches ``(G, S, d)`` each unit of a group sees and the targets ``(G, S, units)``."""
    if isinstance(layer, BcosLinear):
        return x.reshape(1, -1, x.shape[-1]), out.reshape(1, -1, out.shape[-1])
    g = layer.groups
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    n, d, positions = cols.shape
    patches = cols.view(n, g, d // g, positions).permute(1, 0, 3, 2).reshape(g, -1, d // g)
    units = out.shape[1] // g
    targets = out.reshape(n, g, units, -1).permute(1, 0, 3, 2).reshape(g, -1, units)
    return patches, targets


def _accumulate(problem: _Problem, x: Tensor, target: Tensor) -> bool:
    """Add a batch to the sums; False when the target's positions are not the layer's."""
    layer = problem.layer
    if isinstance(layer, BcosConv2d) and target.ndim == 2:
        target = target[:, :, None, None]  # a linear layer converted to a 1 x 1 convolution
    groups = layer.groups if isinstance(layer, BcosConv2d) else 1
    positions = target[:1].numel() // problem.start.shape[0]  # per image
    chunk = max(1, _CHUNK // (positions * problem.start[0].numel() * groups))
    for start in range(0, len(x), chunk):
        patches, targets = _groups(
            layer, x[start : start + chunk].double(), target[start : start + chunk].double()
        )
        if patches.shape[1] != targets.shape[1]:
            return False  # e.g. a classifier applied before the pooling instead of after it
        norm = (patches.pow(2).sum(-1, keepdim=True) + layer.eps).sqrt()
        needed = targets.sign() * (targets.abs() * norm ** (layer.b - 1)).pow(1 / layer.b)
        transposed = patches.transpose(1, 2)
        gram, moment = transposed @ patches, transposed @ needed
        problem.gram = gram if problem.gram is None else problem.gram + gram
        problem.moment = moment if problem.moment is None else problem.moment + moment
        if problem.samples is not None:
            problem.samples.append((patches, needed))
            if sum(p.shape[1] for p, _ in problem.samples) >= patches.shape[-1]:
                problem.samples = None  # as many samples as inputs: the usual solve
    return True


def _solve(problem: _Problem, ridge: float) -> None:
    """The ridge solution towards the start weight, written into the layer."""
    assert problem.gram is not None and problem.moment is not None
    groups, d, units = problem.moment.shape
    start = problem.start.reshape(groups, units, d).transpose(1, 2)
    pull = ridge * problem.gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12).view(-1, 1)
    if problem.samples:
        # (P'P + l I)^-1 (P'Z + l W0) = W0 + P' (P P' + l I)^-1 (Z - P W0): samples x samples
        patches = torch.cat([p for p, _ in problem.samples], dim=1)
        needed = torch.cat([z for _, z in problem.samples], dim=1)
        matrix = patches @ patches.transpose(1, 2)
        matrix.diagonal(dim1=1, dim2=2).add_(pull)
        factor = torch.linalg.cholesky(matrix)
        correction = torch.cholesky_solve(needed - patches @ start, factor)
        solution = start + patches.transpose(1, 2) @ correction
    else:
        matrix = problem.gram.clone()
        matrix.diagonal(dim1=1, dim2=2).add_(pull)
        # with the ridge the matrix is positive definite: Cholesky, about twice as fast as LU
        factor = torch.linalg.cholesky(matrix)
        solution = torch.cholesky_solve(problem.moment + pull[..., None] * start, factor)
    weight = problem.layer.weight
    weight.data.copy_(solution.transpose(1, 2).reshape(weight.shape).to(weight.dtype))
