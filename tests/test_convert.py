"""bcosify.convert on real torchvision and timm CNNs and on a plain user-written CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import assert_signal, keep_signal_alive
from torch import nn

import bcosify
from bcosify import ConversionError, explain
from bcosify.convert import Replacement
from bcosify.models import IMAGENET_MEAN, IMAGENET_STD, create
from bcosify.nn import BcosConv2d, BcosLinear, DetachedGate

TORCHVISION = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "vgg11_bn",
    "convnext_tiny",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "regnet_y_400mf",
]
TIMM = ["resnet18", "convnext_atto", "efficientnet_b0", "convnextv2_atto", "tf_efficientnet_b0"]
SIZE = 64


def randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine parameters, so that no norm is an identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            # global response norms (ConvNeXt V2) are identities at initialisation
            grn = type(module).__name__ == "GlobalResponseNorm"
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) or grn:
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def normalise(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


class PlainCNN(nn.Module):
    """A user-written CNN: functional calls, a residual, a layer scale, a functional GELU."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(4, 16)
        self.scale = nn.Parameter(torch.full((1, 16, 1, 1), 0.5))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.scale * F.gelu(self.norm(self.conv(x)))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.head(x)


def check_conversion(
    original: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, off_path: tuple[str, ...] = ()
) -> None:
    """Equivalence, completeness and no bias on the explained path; ``off_path``: the
    parameters that compute attention weights (detached gates) keep theirs."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = original(normalise(x, mean, std))
        # equivalence: B = 1, biases and pooling kept; both encodings
        for encoding in ("fold", "paper"):
            same, _ = bcosify.convert(
                original,
                input_mean=mean,
                input_std=std,
                b=1.0,
                keep_bias=True,
                maxpool="keep",
                activations="keep",
                encoding=encoding,
            )
            error = (same(x) - reference).abs().max()
            assert error <= 1e-4 * reference.abs().max(), (encoding, float(error))

    # completeness with the defaults, on a network whose signal does not underflow
    model, report = bcosify.convert(original, input_mean=mean, input_std=std)
    assert report.replaced and "BcosConv2d" in str(report)
    e = explain(keep_signal_alive(model, x), x)
    assert list(e.constants) == ["logit_bias.bias"]  # no other offset on the input path
    signal = assert_signal(e)
    assert (e.residual.abs() <= 1e-4 * signal).all(), (e.residual, signal)

    # no bias anywhere on the explained path (gates of squeeze-and-excitation blocks only scale)
    gates = [name for name, m in model.named_modules() if isinstance(m, DetachedGate)]
    biases = [
        name
        for name, _ in model.named_parameters()
        if name.endswith("bias")
        and not any(name.startswith(g + ".") for g in gates)
        and name not in off_path
    ]
    assert biases == []
    layers = [m for m in model.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    assert layers and not any(
        isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in model.modules()
    )
    assert isinstance(model.normalization, nn.Identity)


@pytest.mark.parametrize("arch", TORCHVISION)
def test_torchvision_architectures(arch):
    check_conversion(randomise_statistics(create(f"torchvision:{arch}", num_classes=10)))


@pytest.mark.parametrize("arch", TIMM)
def test_timm_architectures(arch):
    pytest.importorskip("timm")
    check_conversion(randomise_statistics(create(f"timm:{arch}", num_classes=10)))


def test_plain_user_cnn():
    original = randomise_statistics(PlainCNN())
    check_conversion(original, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    _, report = bcosify.convert(original, input_mean=(0.5,) * 3, input_std=(0.2,) * 3)
    assert any("functional gelu" in note for note in report.notes)
    assert any("1x1 convolution before" in note for note in report.notes)


class Tree(nn.Module):
    """DLA's tree: the list of features it is passed joined with ``+`` to its own."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.root = nn.Conv2d(12, 6, 1)

    def forward(self, x: torch.Tensor, children: list[torch.Tensor]) -> torch.Tensor:
        y = F.relu(self.branch(x))
        # the code under test: lists, not tensors, added
        return self.root(torch.cat([y, x * 2] + children, 1))  # noqa: RUF005


class JoinedLists(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.tree = Tree()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        return self.head(self.tree(x, [x]).mean((2, 3)))


def test_lists_joined_with_plus_are_not_constants_added():
    check_conversion(JoinedLists().eval(), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


class PathAttention(nn.Module):
    """SKNet's selective-kernel attention: weights over the paths, a softmax; no rule knows it."""

    def __init__(self, channels: int, paths: int) -> None:
        super().__init__()
        self.paths = paths
        self.reduce = nn.Linear(channels, 4)
        self.select = nn.Linear(4, channels * paths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.select(F.relu(self.reduce(x.mean((2, 3)))))
        return torch.softmax(weights.view(x.shape[0], self.paths, -1), dim=1)


class SelectiveKernel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.paths = nn.ModuleList([nn.Conv2d(6, 6, k, padding=k // 2) for k in (1, 3)])
        self.attention = PathAttention(6, 2)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        paths = torch.stack([path(x) for path in self.paths], dim=1)
        weights = self.attention(paths.sum(1))
        x = (paths * weights.view(x.shape[0], 2, -1, 1, 1)).sum(1)  # through a reshape
        return self.head(x.mean((2, 3)))


def test_a_module_computing_a_softmax_gate_is_a_gate_by_its_structure():
    original = SelectiveKernel().eval()
    off_path = ("network.attention.reduce.bias", "network.attention.select.bias")
    check_conversion(original, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), off_path=off_path)
    model, report = bcosify.convert(original, input_mean=(0.5,) * 3, input_std=(0.2,) * 3)
    assert type(model.network.attention) is PathAttention  # keeps its function: it only gates
    assert any("gated product" in note for note in report.notes), str(report)


class PartialConv(nn.Module):
    """FasterNet's block: picks its forward per instance in ``__init__``."""

    def __init__(self, rewritten: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.forward = self.forward_gelu if rewritten else self.forward_split  # type: ignore

    def forward_split(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [3, 5], dim=1)
        return torch.cat([self.conv(a), b], 1)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.forward_split(x))  # a functional activation: code that must change


class PartialNet(nn.Module):
    def __init__(self, rewritten: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = PartialConv(rewritten)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(F.relu(self.stem(x))).mean((2, 3)))


def test_a_forward_set_per_instance_is_traced_and_named_where_it_must_change():
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    check_conversion(PartialNet().eval(), **stats)
    with pytest.raises(ConversionError, match=r"'block' \(PartialConv\): sets its own forward"):
        bcosify.convert(PartialNet(rewritten=True), input_mean=(0.5,) * 3, input_std=(0.2,) * 3)


def test_paper_encoding_reports_its_offset_as_a_constant():
    original = randomise_statistics(create("torchvision:resnet18", num_classes=4))
    model, report = bcosify.convert(original, encoding="paper")
    x = torch.rand(2, 3, 32, 32)
    e = explain(keep_signal_alive(model, x), x)
    signal = assert_signal(e)
    assert set(e.constants) == {"normalization.offset", "logit_bias.bias"}
    offset = e.constants["normalization.offset"]
    assert (offset.abs() > 1e-3 * signal).all(), (offset, signal)  # not a rounding error
    assert (e.residual.abs() <= 1e-4 * signal).all(), (e.residual, signal)
    # the offset is needed: the contributions and the logit bias alone do not sum to the score
    assert ((e.residual + offset).abs() > 1e-4 * signal).all()
    assert "normalization.offset" in str(report)


def test_original_is_untouched_and_options_take_effect():
    original = randomise_statistics(create("torchvision:resnet18", num_classes=4))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model, report = bcosify.convert(original, maxpool="avg", activations="identity", b=2.5)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert not any(isinstance(m, (nn.MaxPool2d, nn.ReLU)) for m in model.modules())
    assert any(isinstance(m, nn.AvgPool2d) for m in model.modules())
    assert {m.b for m in model.modules() if isinstance(m, BcosConv2d)} == {2.5}
    assert report.counts()["ReLU -> Identity"] == 9


def test_logit_bias_options():
    original = create("torchvision:resnet18", num_classes=11)
    auto, _ = bcosify.convert(original)
    assert float(auto.logit_bias.bias) == pytest.approx(-2.302585, abs=1e-5)
    fixed, _ = bcosify.convert(original, logit_bias=-1.5)
    assert float(fixed.logit_bias.bias) == -1.5
    none, _ = bcosify.convert(original, logit_bias=None)
    assert isinstance(none.logit_bias, nn.Identity)


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.squash = nn.Tanh()
        self.lstm_like = nn.Softmax(dim=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squash(self.conv(x))
        x = torch.sigmoid(x * x)  # a product of two signals (no gate), a sigmoid output
        x = self.lstm_like(x) + 1.0  # an offset
        return self.head(x.mean((2, 3)))


def test_unsupported_modules_are_all_named():
    with pytest.raises(ConversionError) as info:
        bcosify.convert(Unsupported(), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    message = str(info.value)
    for expected in (
        "'squash' (Tanh)",
        "'lstm_like' (Softmax)",
        "calls sigmoid",
        "multiplies input-dependent tensors",
        "adds a constant",
        "rules={TheType: rule}",
    ):
        assert expected in message, (expected, message)
    assert "5 part(s)" in message


def test_user_rules_extend_and_override_the_table():
    class Smooth(nn.Module):  # an unknown leaf-like module without a rule
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x)

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), Smooth(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(ConversionError, match="calls tanh"):
        bcosify.convert(model, input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    converted, report = bcosify.convert(
        model,
        input_mean=(0.5,) * 3,
        input_std=(0.5,) * 3,
        rules={Smooth: lambda module, context: nn.Identity()},
    )
    assert Replacement("1", "Smooth", "Identity") in report.replaced
    e = explain(converted, torch.rand(1, 3, 8, 8))
    assert e.residual.abs().max() < 1e-5


def test_input_must_enter_one_convolution():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with pytest.raises(ConversionError, match="must go straight into one Conv2d"):
        bcosify.convert(model, input_mean=(0.5,) * 3, input_std=(0.5,) * 3)


def test_mean_and_std_are_required_for_models_of_unknown_origin():
    with pytest.raises(ConversionError, match="pass input_mean and input_std"):
        bcosify.convert(PlainCNN())
