"""The image demo's settings: the task, the budgets and the evaluation, and the presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PRESETS", "DemoSettings"]


@dataclass(frozen=True)
class DemoSettings:
    """The task, the budgets and the evaluation of a demo run (see :data:`PRESETS`).

    The task: ``classes`` shapes (the first of :data:`bcosify.data.ALL_SHAPES`) at
    ``image_size``, with ``distractors`` distractor objects and ``textured`` objects. The
    original trains ``standard_epochs`` (a cosine schedule), then ``finetune_epochs`` more at
    ``lr_finetune``, as the B-cosified model will, again from each result until that raises the
    validation accuracy by less than ``plateau_gain`` points (at most ``max_cycles`` runs in
    all): the model before the last continuation is the original, the last one the control.
    The B-cosified model converts the network's max pooling to average pooling
    (``maxpool="avg"``) or keeps it (``"keep"``), as :class:`bcosify.train.Recipe`'s
    ``maxpool`` does; the B-cos model from scratch keeps it, with which it trains faster.
    The pointing game takes ``grids`` grids of each of the ``grid_sizes``, of test images
    classified correctly with a probability above ``confidence``; the sampled post-hoc methods
    run again with larger budgets on the first ``check_grids`` of the smallest grids.
    """

    image_size: int = 32
    classes: int = 10
    distractors: int = 0
    textured: bool = False
    num_train: int = 4000
    num_val: int = 2000
    num_test: int = 1000
    # cheap at full resolution (the grids' cost), wider where the maps are small
    widths: tuple[int, ...] = (8, 16, 32, 64)
    # as the published code does: through a max pool each window's explanation is one pixel's,
    # and the maps come out speckled (bench_colour: same-model pointing game 0.635 -> 0.662)
    maxpool: Literal["keep", "avg"] = "avg"
    batch_size: int = 64
    standard_epochs: int = 12
    plateau_gain: float = 1.0
    max_cycles: int = 4
    finetune_epochs: int = 5
    scratch_epochs: int = 8
    lr_standard: float = 3e-3
    lr_finetune: float = 3e-3
    lr_scratch: float = 1e-3
    grids: int = 100
    grid_sizes: tuple[int, ...] = (2, 3)
    confidence: float = 0.5
    check_grids: int = 12
    eval_images: int = 64
    gallery: int = 6
    ig_steps: int = 4
    rise_masks: int = 200
    lime_samples: int = 80
    bootstrap: int = 2000
    seed: int = 0


PRESETS = {
    "default": DemoSettings(),
    "full": DemoSettings(
        image_size=64,
        classes=16,
        distractors=2,
        textured=True,
        num_train=16_000,
        widths=(16, 32, 64, 128, 128),
        standard_epochs=20,
        finetune_epochs=8,
        scratch_epochs=24,
        grids=250,
        eval_images=250,
        ig_steps=50,
        rise_masks=1000,
        lime_samples=1000,
    ),
    # a smoke test: seconds, meaningless numbers
    "test": DemoSettings(
        image_size=32,
        classes=10,
        distractors=1,
        num_train=96,
        num_val=32,
        num_test=64,
        widths=(8, 8),
        batch_size=16,
        standard_epochs=1,
        max_cycles=2,
        finetune_epochs=1,
        scratch_epochs=2,
        grids=3,
        grid_sizes=(2,),
        # untrained models are never confident: grids of the correctly classified images
        confidence=0.0,
        eval_images=4,
        gallery=2,
        ig_steps=4,
        rise_masks=16,
        lime_samples=16,
        bootstrap=200,
    ),
}
