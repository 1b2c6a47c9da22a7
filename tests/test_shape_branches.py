"""Code that branches on the input's shape converts, traced at the input size, and guards it.

torch.fx cannot trace ``if H % window:``, ``range(H // window)`` or ``len(x.shape)``; the
converter traces such code again with the values of an example input of the model's size
(``convert(..., input_size=)``, else the source's or timm's). The converted model equals the
original at that size, explains completely, and refuses, naming the line, an input on which
that code would take another branch. Code that branches on a tensor's values stays refused.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from nets import assert_same_function, keep_signal_alive
from torch import nn

import bcosify
from bcosify.errors import ConversionError
from bcosify.explain import Explanation

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


class Windows(nn.Module):
    """Splits the feature map into windows of ``window`` rows, padding when it does not divide:
    the branch and the loop depend on the input's height. Its functional GELU makes the
    converter rewrite its code (unchanged code runs as it is, at any size)."""

    def __init__(self, channels: int, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.mix = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-2]
        if height % self.window:
            x = F.pad(x, (0, 0, 0, self.window - height % self.window))
        rows = [
            self.mix(x[:, :, i * self.window : (i + 1) * self.window])
            for i in range(int(x.shape[-2]) // self.window)
        ]
        return F.gelu(torch.cat(rows, dim=2)[:, :, :height])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.windows = Windows(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.windows(self.act(self.stem(x)))
        dims = tuple(range(2, len(x.shape)))  # len of a shape: concrete, guarded
        return self.head(x.mean(dims))


class ValueBranch(nn.Module):
    """Branches on a tensor's values: no example makes that traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return y.mean((2, 3))


class Normalised(nn.Module):
    """The original on images in [0, 1], as the converted model takes them."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
        return self.network((x - mean) / std)


def converted_exactly(
    original: nn.Module, x: torch.Tensor, **options
) -> tuple[bcosify.BcosModel, list[str], Explanation]:
    """Converted at B = 1 with biases it is the original; with the defaults it explains ``x``
    completely on a live signal. Returns the default model, its report's constants and the
    explanation."""
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, **options)
    assert_same_function(Normalised(original), x, same, atol=1e-5)
    model, report = bcosify.convert(original, **options)
    keep_signal_alive(model, x)
    explanation = bcosify.explain(model, x, target=torch.arange(len(x)) % 5)
    scale = explanation.scores.abs().max()
    assert explanation.residual.abs().max() <= 1e-5 * scale
    assert explanation.contributions.sum((1, 2, 3)).abs().min() > 1e-3 * scale
    return model, report.constants, explanation


def _original() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("height", [12, 14])  # divisible by the window, and padded
def test_shape_branches_convert_exactly_at_the_input_size(height):
    x = torch.rand(3, 3, height, 10, generator=torch.Generator().manual_seed(1))
    options = {"input_mean": MEAN, "input_std": STD, "input_size": (height, 10)}
    model, _, _ = converted_exactly(_original(), x, **options)
    assert model.config.input_size == (height, 10)


def test_an_input_taking_another_branch_is_refused_naming_the_code():
    model, _ = bcosify.convert(_original(), input_mean=MEAN, input_std=STD, input_size=(12, 10))
    # the rewritten code pads or not and loops as at 12 rows: another height is refused
    for height in (14, 16):
        with pytest.raises(AssertionError, match=r"test_shape_branches\.py:\d+.*input_size="):
            model(torch.rand(1, 3, height, 10))
    model(torch.rand(1, 3, 12, 7))  # the width: no branch depends on it
    # the guards survive a round trip
    restored = pickle.loads(pickle.dumps(model))
    with pytest.raises(AssertionError, match="input_size="):
        restored(torch.rand(1, 3, 14, 10))


def test_without_an_input_size_the_error_says_to_pass_one():
    with pytest.raises(ConversionError, match=r"input_size=\(height, width\)"):
        bcosify.convert(_original(), input_mean=MEAN, input_std=STD)


def test_a_branch_on_tensor_values_stays_refused():
    with pytest.raises(ConversionError, match="data-dependent control flow"):
        bcosify.convert(ValueBranch(), input_mean=MEAN, input_std=STD, input_size=(8, 8))


def test_the_original_is_left_untouched():
    original = _original()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    bcosify.convert(original, input_mean=MEAN, input_std=STD, input_size=(12, 10))
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert not any("forward" in vars(m) for m in original.modules())


def test_timm_vit_with_a_dynamic_image_size_converts_at_its_own_size():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    # timm's test ViT resamples its position embedding only when the grid differs
    original = timm.create_model("test_vit", num_classes=5).eval()
    same, _ = bcosify.convert(original, b=1.0, keep_bias=True, input_mean=MEAN, input_std=STD)
    size = bcosify.convert.families.model_input_size(original)
    assert size == (160, 160)
    assert_same_function(Normalised(original), torch.rand(2, 3, *size), same, atol=1e-5)


class Patches(nn.Module):
    """Returns the patches and their grid's size, as timm's XCiT and Twins embeddings do."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x, (x.shape[-2], x.shape[-1])


class Fourier(nn.Module):
    """A position encoding computed from the grid's size alone (XCiT's)."""

    def forward(self, height: int, width: int) -> torch.Tensor:
        rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
        cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
        bands = torch.arange(1, 5, dtype=torch.float32)[:, None, None]
        return torch.cat([torch.sin(bands * rows), torch.cos(bands * cols)])[None]


class GridNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patches = Patches()
        self.position = Fourier()
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (height, width) = self.patches(x)
        x = self.mix(x + self.position(height, width))
        return self.head(x.mean((2, 3)))


def test_sizes_returned_with_the_signal_are_sizes_and_what_they_compute_a_constant():
    torch.manual_seed(0)
    options = {"input_mean": MEAN, "input_std": STD, "input_size": (12, 16)}
    x = torch.rand(3, 3, 12, 16)
    _, constants, explanation = converted_exactly(GridNet().eval(), x, **options)
    assert any(line.startswith("network.position:") for line in constants), constants
    assert explanation.constants["network.position"].abs().min() > 0


class Caching(nn.Module):
    """Caches a computed tensor by device (LeViT's attention biases) and stores its input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.ones(4))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        self.last = x
        return x * torch.arange(4.0) + self.cache[key]  # a tensor made here: fx stores it


def test_tracing_leaves_the_module_as_it_was():
    from bcosify.convert.tracing import trace_method

    module = Caching()
    shared = module.cache
    graphs = [trace_method(module, "m", "forward", {}, {"x"}).graph for _ in range(2)]
    assert module.cache == {} and module.cache is shared and "last" not in vars(module)
    for graph in graphs:  # each graph its own: no proxy of the first trace in the second
        graph.lint()
        # but what fx stored for the graph stays (Swin's and BEiT's tables made in forward)
        constants = [n.target for n in graph.nodes if n.op == "get_attr" and n.target != "bias"]
        assert constants and all(hasattr(module, c) for c in constants)
    assert module(torch.ones(4)).tolist() == [2.0, 3.0, 4.0, 5.0]


class Branches(nn.Module):
    """HRNet's multi-resolution module: replaces the items of the list it is passed."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        for i, branch in enumerate(self.branches):
            xs[i] = F.gelu(branch(xs[i]))
        return xs


class ListNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branches = Branches()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        a, b = self.branches([a, b])
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


def test_a_list_argument_whose_items_are_replaced_converts():
    torch.manual_seed(0)
    options = {"input_mean": MEAN, "input_std": STD, "input_size": (8, 8)}
    converted_exactly(ListNet().eval(), torch.rand(3, 3, 8, 8), **options)
