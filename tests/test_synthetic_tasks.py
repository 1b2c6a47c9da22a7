"""The harder synthetic tasks: more shapes, distractor objects and textures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bcosify.data import ALL_SHAPES, EXTRA_SHAPES, SHAPES, SyntheticShapes
from bcosify.data.synthetic import _shape_alpha
from bcosify.errors import DataError


def test_every_shape_is_its_own_silhouette():
    assert set(SHAPES).isdisjoint(EXTRA_SHAPES) and len(ALL_SHAPES) == 20
    assert list(ALL_SHAPES) == sorted(ALL_SHAPES)
    centre = np.array([32.0, 32.0])
    masks = {name: _shape_alpha(name, 64, 24.0, 0.3, 1.0, centre) > 0.5 for name in ALL_SHAPES}
    for name, mask in masks.items():
        assert 0.05 < mask.mean() < 0.6, name  # inside the image, never a speck or all of it
    for a, b in itertools.combinations(ALL_SHAPES, 2):
        overlap = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        # the closest pair of the original ten, circle and hexagon, differ in their corners
        assert overlap < (0.95 if a in SHAPES and b in SHAPES else 0.85), (a, b, overlap)


def test_distractors_and_textures_keep_the_object_and_its_mask():
    classes = ALL_SHAPES[:16]
    plain = SyntheticShapes(30, 48, classes=classes, return_mask=True)
    hard = SyntheticShapes(30, 48, classes=classes, return_mask=True, distractors=2)
    textured = SyntheticShapes(30, 48, classes=classes, return_mask=True, textured=True)
    for i in range(len(plain)):
        image, label, mask = plain[i]
        for other in (hard, textured):
            _, o_label, o_mask = other[i]
            assert o_label == label and torch.equal(o_mask, mask)  # the same object, same place
        # distractors change the picture, but not under the object (it is drawn on top)
        changed = (hard[i][0] != image).any(0)
        assert changed.any()
        inner = ~F.max_pool2d((~mask)[None, None].float(), 5, stride=1, padding=2)[0, 0].bool()
        assert not changed[inner].any()
        # a texture changes the object only, and makes it less uniform
        changed = (textured[i][0] != image).any(0)
        near = F.max_pool2d(mask[None, None].float(), 5, stride=1, padding=2)[0, 0].bool()
        assert not changed[~near].any()
        assert textured[i][0][:, mask].std(1).mean() > image[:, mask].std(1).mean()


def test_distractors_are_outside_the_mask_and_in_the_background():
    data = SyntheticShapes(20, 64, classes=ALL_SHAPES[:16], distractors=3, return_mask=True)
    for i in range(len(data)):
        image, _, mask = data[i]
        background = data.background(i)
        # the image without the object still has its distractors; only the object differs
        changed = (image != background).any(0)
        near = F.max_pool2d(mask[None, None].float(), 5, stride=1, padding=2)[0, 0].bool()
        assert changed[mask].float().mean() > 0.98 and not changed[~near].any()
    assert data.distractor_shapes == ("star", "tee", "trapezoid", "triangle")
    assert "distractors=3" in repr(data)


def test_bad_task_options_raise_data_errors():
    with pytest.raises(DataError, match="distractors"):
        SyntheticShapes(4, distractors=-1)
    with pytest.raises(DataError, match="not classes"):
        SyntheticShapes(4, classes=ALL_SHAPES, distractors=1)  # no shape left over
    with pytest.raises(DataError, match=r"\['circle'\] are not"):
        SyntheticShapes(4, distractors=1, distractor_shapes=["circle", "tee"])
    # the default classes leave the extra shapes for the distractors
    assert SyntheticShapes(4, distractors=1).distractor_shapes == EXTRA_SHAPES
    assert SyntheticShapes(4, classes=EXTRA_SHAPES[:3]).classes == EXTRA_SHAPES[:3]
