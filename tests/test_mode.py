"""explanation_mode: switches the modules present at entry and always restores them."""

from __future__ import annotations

import pytest
from torch import nn

from bcosify.nn import BcosGELU, BcosLinear, explanation_mode, is_explaining


def test_switches_every_aware_module_and_restores():
    model = nn.Sequential(BcosLinear(3, 3), nn.ReLU(), nn.Sequential(BcosGELU(), BcosLinear(3, 2)))
    with explanation_mode(model) as entered:
        assert entered is model
        assert all(m.explaining for m in (model[0], model[2][0], model[2][1]))
    assert not is_explaining(model)


def test_restores_after_an_error():
    model = nn.Sequential(BcosLinear(3, 3))
    with pytest.raises(RuntimeError, match="boom"), explanation_mode(model):
        raise RuntimeError("boom")
    assert not is_explaining(model)


def test_restores_previous_state_when_nested():
    model = nn.Sequential(BcosLinear(3, 3), BcosLinear(3, 3))
    model[1].explaining = True  # the user switched one module by hand
    with explanation_mode(model):
        with explanation_mode(model, enabled=False):
            assert not model[0].explaining and not model[1].explaining
        assert model[0].explaining and model[1].explaining
    assert not model[0].explaining and model[1].explaining


def test_modules_added_later_are_found_next_time():
    model = nn.Sequential(BcosLinear(3, 3))
    context = explanation_mode(model)
    with context:
        model.append(BcosLinear(3, 3))
        assert not model[1].explaining  # not present at entry
    assert not model[0].explaining and not model[1].explaining
    with context:
        assert model[1].explaining


def test_works_as_a_decorator():
    model = nn.Sequential(BcosLinear(3, 3))

    @explanation_mode(model)
    def inside() -> bool:
        return is_explaining(model)

    assert inside() and inside()
    assert not is_explaining(model)


def test_rejects_non_modules():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        explanation_mode("model")  # type: ignore[arg-type]
