"""Block-wise reconstruction: each block of a converted network trained to reproduce the
original's block, in the order the forward calls them.

What :func:`bcosify.calibrate` does with ``method="blocks"``, after the closed-form layer fit
(:mod:`bcosify.convert.reconstruct`). The layer fit solves each layer's linear output alone;
a block's units then pass through norms, activations and a residual sum, where the errors of
its layers add up or cancel. As post-training quantization does after AdaRound's layer-wise
fit (BRECQ, Li et al. 2021), each block is then trained by a few gradient steps to reproduce
the original block's output from the input the converted network passes it (so that it makes
up for the errors of the blocks before it too), with the rest of the network fixed: the
block's inputs and the original's outputs are computed once, and a step costs one block.

The blocks are the network's stages (the children of the module that calls the most of its
children with children: a ResNet's ``layer1..4``, a timm EfficientNet's ``blocks``, a ViT's
``blocks``), a stage that is an ``nn.Sequential`` split into its children, since its forward
is theirs in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..nn import BcosConv2d, BcosLinear
from .reconstruct import fit_layers, run_side_by_side

__all__ = ["fit_blocks", "reconstruction_blocks", "stage_sequence"]

# crops per gradient step
_STEP_BATCH = 16


def stage_sequence(root: nn.Module, run: Callable[[], Any]) -> tuple[str, ...]:
    """The paths of a network's sequence of stages, in the order the forward calls them.

    ``run()`` runs the network's forward once. Among the modules with children that it calls,
    the one calling the most of its own children that have children (a ResNet's ``layer1..4``,
    a ViT's ``blocks``, a timm EfficientNet's ``blocks``) holds the stages; ``()`` when the
    forward calls no module with children.

    Example:
        >>> import torch
        >>> from bcosify.models import create
        >>> net = create("torchvision:resnet18", num_classes=3).eval()
        >>> stage_sequence(net, lambda: net(torch.rand(1, 3, 32, 32)))
        ('layer1', 'layer2', 'layer3', 'layer4')
    """
    order = _ends(root, lambda path, module: bool(path) and next(module.children(), None), run)
    stages: dict[str, list[str]] = {}
    for path in sorted(set(order), key=order.index):
        stages.setdefault(path.rpartition(".")[0], []).append(path)
    return tuple(max(stages.values(), key=len)) if stages else ()


def reconstruction_blocks(root: nn.Module, run: Callable[[], Any]) -> tuple[str, ...]:
    """The blocks :func:`fit_blocks` trains: the stages of :func:`stage_sequence`, each
    ``nn.Sequential`` stage replaced by its children.

    Example:
        >>> import torch
        >>> from bcosify.models import create
        >>> net = create("torchvision:resnet18", num_classes=3).eval()
        >>> reconstruction_blocks(net, lambda: net(torch.rand(1, 3, 32, 32)))[:3]
        ('layer1.0', 'layer1.1', 'layer2.0')
    """
    blocks: list[str] = []
    for path in stage_sequence(root, run):
        stage = root.get_submodule(path)
        if isinstance(stage, nn.Sequential) and len(stage):
            blocks += [f"{path}.{name}" for name, _ in stage.named_children()]
        else:
            blocks.append(path)
    return tuple(blocks)


def fit_blocks(
    model: nn.Module,
    original: nn.Module,
    batches: list[Tensor],
    *,
    steps: int,
    lr: float,
    ridge: float,
    seed: int = 0,
) -> tuple[int, tuple[str, ...]]:
    """Train every block of ``model`` (:func:`reconstruction_blocks`), in forward order, for
    ``steps`` Adam steps at ``lr`` to reproduce the original's block at the same path (the
    relative squared error of its output) on what the converted network passes it, keeping
    the result only where it lowered that error on a quarter of the images held out; then
    the B-cos layers after the last block are fitted again in closed form (``ridge``, as
    :func:`~bcosify.convert.reconstruct.fit_layers`) to what the blocks now pass them. Returns
    how many blocks were trained and why the others were not."""
    network = getattr(model, "network", model)
    run = lambda: run_side_by_side(model, original, [batches[0][:1]], lambda: None)  # noqa: E731
    # found in the original: the converted network wraps kept biases in modules of their own
    paths = reconstruction_blocks(original, run)
    if not paths:
        return 0, ("no blocks: the original's forward calls no module with submodules",)
    skipped: list[str] = []
    trained = 0
    generator = torch.Generator().manual_seed(seed)
    for path in paths:
        student = network.get_submodule(path)
        try:
            teacher = original.get_submodule(path)
        except AttributeError:
            skipped.append(f"{path}: no module at this path in the original")
            continue
        params = [p for p in student.parameters() if p.requires_grad]
        if not params:
            skipped.append(f"{path}: no parameters to train")
            continue
        pairs = _inputs_and_targets(model, original, student, teacher, batches)
        if isinstance(pairs, str):
            skipped.append(f"{path}: {pairs}")
            continue
        inputs, targets = pairs
        if _train(student, params, inputs, targets, steps, lr, generator):
            trained += 1
        else:
            skipped.append(
                f"{path}: training did not lower its error on held-out images (left as it was)"
            )
    head = _after(network, paths[-1], run) if trained else set()
    if head:
        # the layers after the blocks were fitted to make up for the blocks' errors as they
        # were: fitted again to the blocks' new output
        fit_layers(model, original, batches, ridge, only=head)
    return trained, tuple(skipped)


def _after(network: nn.Module, last: str, run: Callable[[], Any]) -> set[str]:
    """The paths of the B-cos layers the forward calls after the block ``last`` returns."""
    ended = _ends(
        network,
        lambda path, module: path == last or isinstance(module, (BcosConv2d, BcosLinear)),
        run,
    )
    return set(ended[ended.index(last) + 1 :]) if last in ended else set()


def _ends(
    root: nn.Module, chosen: Callable[[str, nn.Module], Any], run: Callable[[], Any]
) -> list[str]:
    """The paths of the ``chosen`` modules of ``root`` in the order their calls return while
    ``run()`` runs the forward (a path once per call)."""
    ended: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_, p=path: ended.append(p))
        for path, module in root.named_modules()
        if chosen(path, module)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return ended


def _inputs_and_targets(
    model: nn.Module,
    original: nn.Module,
    student: nn.Module,
    teacher: nn.Module,
    batches: list[Tensor],
) -> tuple[Tensor, Tensor] | str:
    """The block's inputs in ``model`` and the original block's outputs on the same images,
    or why the block cannot be trained on them alone."""
    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    why: list[str] = []

    def keep_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            why.append("it takes more than one tensor")
        else:
            inputs.append(args[0].detach())

    def keep_output(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            targets.append(output.detach())
        else:
            why.append("its output is not one tensor")

    handles = [
        student.register_forward_pre_hook(keep_input, with_kwargs=True),
        teacher.register_forward_hook(keep_output),
    ]
    try:
        with torch.no_grad():
            run_side_by_side(model, original, batches, lambda: None)
    finally:
        for handle in handles:
            handle.remove()
    if why:
        return why[0]
    if len(inputs) != len(targets):
        return "the original calls it a different number of times"
    source, target = torch.cat(inputs), torch.cat(targets)
    with torch.no_grad():
        produced = student(source[:1])
    if not isinstance(produced, Tensor) or produced.shape[1:] != target.shape[1:]:
        return "its output does not match the original's in shape"
    return source, target


def _train(
    block: nn.Module,
    params: list[nn.Parameter],
    inputs: Tensor,
    targets: Tensor,
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> bool:
    """Adam steps on the block's relative squared error on three quarters of the images; the
    block is put back as it was unless its error on the other quarter fell (a block has more
    parameters than a few images pin down, and Adam's steps have the learning rate's size
    even where the gradient is all but zero: a block that already reproduces the original's,
    an exact conversion's, would only get worse). Whether it was kept."""
    held = len(inputs) // 4 if len(inputs) >= 4 else 0
    train_x, train_t = inputs[: len(inputs) - held], targets[: len(inputs) - held]
    check_x, check_t = (inputs[-held:], targets[-held:]) if held else (inputs, targets)
    scale = train_t.pow(2).mean().clamp_min(1e-12)

    def error() -> float:
        with torch.no_grad():
            chunks = zip(check_x.split(_STEP_BATCH), check_t.split(_STEP_BATCH), strict=True)
            return sum(float((block(x) - t).pow(2).sum()) for x, t in chunks)

    before = error()
    saved = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=lr)
    size = min(_STEP_BATCH, len(train_x))
    with torch.enable_grad():
        for _ in range(steps):
            chosen = torch.randint(len(train_x), (size,), generator=generator)
            loss = (block(train_x[chosen]) - train_t[chosen]).pow(2).mean() / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    # no gradient left behind: a training loop that zeroes them after its steps would add
    # its first one to the block's last
    optimizer.zero_grad(set_to_none=True)
    if error() < before:
        return True
    with torch.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)
    return False
