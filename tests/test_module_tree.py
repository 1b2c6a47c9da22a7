"""A converted model is still the user's model: its module tree, classes, hooks and tools.

For every architecture of the conversion tests: every module path of the original exists under
``network.``, containers keep their classes, and a forward hook on every container fires as
often as on the original; the model survives ``torch.save`` of the whole model and
``copy.deepcopy``. Then the tools users hook into a model with (GradCAM, Captum's layer
attributions, torchvision's feature extraction) and timm's own interface.
"""

from __future__ import annotations

import copy
import functools
import io
from collections import Counter

import pytest
import torch
from nets import assert_same_function, keep_signal_alive
from test_convert import TIMM, TORCHVISION, PlainCNN, normalise, randomise_statistics
from test_convert_vit import ARCHITECTURES as VITS
from test_convert_vit import original as vit_original
from torch import nn

import bcosify
from bcosify.convert.tracing import rewritten_methods
from bcosify.errors import InputRangeError
from bcosify.models import create
from bcosify.nn import BcosConv2d, BcosLinear

SIZE = 64


def _builders() -> dict[str, tuple]:
    """id -> (build the original, image size, input mean, input std)."""
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    builders = {
        f"torchvision_{arch}": (
            functools.partial(create, f"torchvision:{arch}", num_classes=10),
            SIZE,
            *imagenet,
        )
        for arch in TORCHVISION
    }
    builders |= {
        f"timm_{arch}": (functools.partial(create, f"timm:{arch}", num_classes=10), SIZE, *imagenet)
        for arch in TIMM
    }
    builders["plain_cnn"] = (PlainCNN, SIZE, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    for arch, (_, _, size, _) in VITS.items():  # the ViT tests' originals, copied
        builders[arch] = (lambda arch=arch: copy.deepcopy(vit_original(arch)), size, *imagenet)
    return builders


BUILDERS = _builders()


def needs(arch: str) -> None:
    if "timm" in arch:
        pytest.importorskip("timm")


@functools.cache
def pair(arch: str) -> tuple[nn.Module, bcosify.BcosModel]:
    build, _, mean, std = BUILDERS[arch]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        original = randomise_statistics(build())
    mean = getattr(getattr(original, "bcosify_source", None), "input_mean", mean)
    std = getattr(getattr(original, "bcosify_source", None), "input_std", std)
    model, _ = bcosify.convert(original, input_mean=mean, input_std=std)
    # converted, it outputs its logit bias alone, whatever its weights: outputs compared
    # between copies would be equal for any copy
    size = BUILDERS[arch][1]
    keep_signal_alive(
        model, torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    )
    return original, model


def hook_counts(model: nn.Module, paths: list[str], x: torch.Tensor) -> Counter:
    """How often a forward hook fires on each of ``paths`` in one forward pass."""
    counts: Counter = Counter()
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda *_, p=p: counts.update([p])  # type: ignore[misc]
        )
        for p in paths
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def check_tree(
    original: nn.Module, run_original, model: bcosify.BcosModel, x: torch.Tensor, whole=True
):
    """Paths, classes and container hooks of ``model.network`` against ``original``, whose
    forward is ``run_original`` (on images normalised as the original expects); ``whole``:
    ``run_original`` calls ``original`` itself (not only its parts)."""
    ours = dict(model.network.named_modules())
    theirs = dict(original.named_modules())
    missing = sorted(set(theirs) - set(ours))
    assert not missing, missing
    containers = [p for p, m in theirs.items() if p and next(m.children(), None) is not None]
    rules = bcosify.convert.default_rules()
    for path in containers:  # a module without a rule keeps its class (or a subclass of it)
        if type(theirs[path]) not in rules:
            assert isinstance(ours[path], type(theirs[path])), (path, type(ours[path]))
    counts: list[Counter] = []
    for root, run in ((original, run_original), (model.network, model.network)):
        counter: Counter = Counter()
        handles = [
            root.get_submodule(p).register_forward_hook(
                lambda *_, p=p, counter=counter: counter.update([p])
            )
            for p in ["", *containers]
        ]
        try:
            with torch.no_grad():
                run(x if root is original else model.encoding(x))
        finally:
            for handle in handles:
                handle.remove()
        counts.append(counter)
    expected, got = counts
    if not whole:
        del got[""]
    assert expected[""] == int(whole) and got == expected


def check_copies(model: nn.Module, x: torch.Tensor) -> None:
    """A whole-model ``torch.save`` / ``torch.load`` and ``copy.deepcopy`` give the same model:
    classes (converted ones included), rewritten methods and outputs (``model`` must be live:
    see :func:`nets.keep_signal_alive`)."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    copies = (torch.load(buffer, weights_only=False), copy.deepcopy(model))
    for copied in copies:
        pairs = list(zip(model.modules(), copied.modules(), strict=True))
        assert all(type(a).__qualname__ == type(b).__qualname__ for a, b in pairs)
        assert all(rewritten_methods(a) == rewritten_methods(b) for a, b in pairs)
    assert_same_function(model, x, *copies)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_module_paths_classes_and_hooks_are_the_originals(arch):
    needs(arch)
    original, model = pair(arch)
    _, size, mean, std = BUILDERS[arch]
    info = getattr(original, "bcosify_source", None)
    mean, std = (info.input_mean, info.input_std) if info else (mean, std)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))

    def run(images):
        return original(normalise(images, mean, std) if images.shape[1] == 3 else images)

    check_tree(original, run, model, x)
    check_copies(model, x)


def _hf_config(transformers):
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2}
    tower["num_attention_heads"] = 2
    return transformers.CLIPConfig(
        text_config=tower,
        projection_dim=8,
        vision_config={**tower, "image_size": 16, "patch_size": 8},
    )


@pytest.mark.parametrize(
    "kind", ["open_clip_resnet", "open_clip_vit", "hf_clip", "hf_clip_vision", "hf_siglip"]
)
def test_clip_image_towers_keep_their_module_tree(kind):
    stats = {"input_mean": (0.5, 0.4, 0.3), "input_std": (0.2, 0.3, 0.25)}
    if kind.startswith("open_clip"):
        pytest.importorskip("open_clip")
        from test_clip import OPEN_CLIP, open_clip_model

        clip = open_clip_model(kind.removeprefix("open_clip_"))
        size, tower, run = OPEN_CLIP[kind.removeprefix("open_clip_")][2], clip.visual, clip.visual
        stats = {"input_mean": clip.bcosify_source.input_mean}
        stats["input_std"] = clip.bcosify_source.input_std
    elif kind == "hf_siglip":
        transformers = pytest.importorskip("transformers")
        from test_families import tiny_siglip

        clip, size = tiny_siglip(transformers), 16
        tower = nn.ModuleDict({"vision_model": clip.vision_model})

        def run(images):
            return clip.get_image_features(pixel_values=images)
    else:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        clip = transformers.CLIPModel(_hf_config(transformers)).eval()
        size = 16
        if kind == "hf_clip":
            tower = nn.ModuleDict(
                {"vision_model": clip.vision_model, "visual_projection": clip.visual_projection}
            )

            def run(images):
                return clip.get_image_features(pixel_values=images)
        else:
            clip = tower = clip.vision_model

            def run(images):
                return clip(pixel_values=images)

    model, _ = bcosify.convert(clip, **stats)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(stats["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(stats["input_std"]).view(1, -1, 1, 1)

    def normalised_run(images):
        return run((images - mean) / std)

    check_tree(tower, normalised_run, model, x, whole=kind not in ("hf_clip", "hf_siglip"))
    check_copies(keep_signal_alive(model, x), x)


def test_a_block_that_needs_no_change_keeps_its_class_and_code():
    original, model = pair("torchvision_resnet18")
    block = model.network.layer4[-1]
    assert type(block) is type(original.layer4[-1])  # BasicBlock itself, not a subclass
    assert isinstance(block.conv1, BcosConv2d)
    assert model.network.fc is model.network.get_submodule("fc")  # torchvision's attribute
    # only the module whose own code moves the classifier before the pooling was rewritten
    assert type(model.network).__name__ == "ResNet"
    assert type(model.network) is not type(original)
    assert isinstance(model.network, type(original))


def test_reused_modules_fire_as_often_as_in_the_original():
    original, model = pair("torchvision_resnet18")
    x = torch.rand(1, 3, SIZE, SIZE)
    path = "layer4.1.relu"  # BasicBlock calls its ReLU twice
    assert hook_counts(model.network, [path], model.encoding(x))[path] == 2
    assert hook_counts(original, [path], normalise(x))[path] == 2


def test_gradcam_runs_on_a_layer_of_a_converted_resnet():
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, model = pair("torchvision_resnet18")
    cam = grad_cam.GradCAM(model=model, target_layers=[model.network.layer4[-1]])
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    assert maps.shape == (2, SIZE, SIZE)
    assert (maps.reshape(2, -1).max(1) > 0).all()  # a map, not a constant


def test_captum_layer_integrated_gradients_on_a_block():
    captum = pytest.importorskip("captum.attr")
    _, model = pair("torchvision_resnet18")
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    block = model.network.layer3
    method = captum.LayerIntegratedGradients(model, block)
    attributions, delta = method.attribute(
        x, target=[0, 1], n_steps=8, return_convergence_delta=True
    )
    with torch.no_grad():
        features = {}
        handle = block.register_forward_hook(lambda m, a, out: features.setdefault("out", out))
        model(x)
        handle.remove()
    assert attributions.shape == features["out"].shape
    assert attributions.abs().sum() > 0 and torch.isfinite(delta).all()


def test_torchvision_feature_extraction_with_the_original_node_names():
    from torchvision.models.feature_extraction import create_feature_extractor

    original, model = pair("torchvision_resnet18")
    nodes = {"layer2": "mid", "layer4.1.relu_1": "late"}
    theirs = create_feature_extractor(original, nodes)
    ours = create_feature_extractor(model.network, nodes)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = theirs(normalise(x)), ours(model.encoding(x))
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
        # the same features as the converted model computes itself
        seen = {}
        handle = model.network.layer2.register_forward_hook(
            lambda m, i, out: seen.setdefault("mid", out)
        )
        model(x)
        handle.remove()
        torch.testing.assert_close(b["mid"], seen["mid"])
    # and on the whole model, images in [0, 1], with the paths under "network."
    whole = create_feature_extractor(model, {"network.layer2": "mid"})
    with torch.no_grad():
        torch.testing.assert_close(whole(x)["mid"], seen["mid"])


@pytest.mark.parametrize(
    "arch", ["timm_resnet18", "timm_convnext_atto", "timm_vit_tiny", "timm_vit_small_avgpool"]
)
def test_timm_interface_is_kept(arch):
    needs(arch)
    from timm.data import create_transform, resolve_data_config

    original, model = pair(arch)
    size = BUILDERS[arch][1]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    info = original.bcosify_source
    with torch.no_grad():
        features = model.forward_features(x)
        assert (
            features.shape
            == original.forward_features(normalise(x, info.input_mean, info.input_std)).shape
        )
        torch.testing.assert_close(model.forward_head(features), model(x))
        pre = model.forward_head(features, pre_logits=True)
        assert pre.shape == original.forward_head(original.forward_features(x), True).shape
    assert model.num_classes == 10
    config = resolve_data_config(model=model)
    assert config["mean"] == (0.0, 0.0, 0.0) and config["std"] == (1.0, 1.0, 1.0)
    transform = create_transform(**config)
    from PIL import Image

    image = transform(Image.new("RGB", (300, 280), (255, 0, 128)))
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


@pytest.mark.parametrize("arch", ["timm_resnet18", "timm_vit_small_avgpool"])
def test_timm_reset_classifier_gives_a_bcos_head_and_exact_explanations(arch, tmp_path):
    needs(arch)
    _, converted = pair(arch)
    model = copy.deepcopy(converted)
    model.reset_classifier(5)
    assert model.num_classes == 5
    assert float(model.logit_bias.bias) == pytest.approx(-torch.log(torch.tensor(4.0)).item())
    head = model.network.get_submodule("fc" if "resnet" in arch else "head")
    assert isinstance(head, (BcosConv2d, BcosLinear))
    size = BUILDERS[arch][1]
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(6))
    model = keep_signal_alive(model, x)
    e = bcosify.explain(model, x, target=[0, 2, 4])
    assert e.logits.shape == (3, 5)
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    assert_same_function(model, x, bcosify.load(model.save_pretrained(tmp_path / "reset")))


def test_inputs_outside_zero_one_are_refused_by_default():
    _, model = pair("torchvision_resnet18")
    x = torch.rand(1, 3, SIZE, SIZE)
    normalised = normalise(x)
    with pytest.raises(InputRangeError, match=r"range from -\d.* a B-cos model takes RGB"):
        model(normalised)
    with pytest.raises(InputRangeError):
        model(x * 255)
    with pytest.raises(InputRangeError):
        model(torch.full_like(x, float("nan")))
    model(x.clamp(0, 1) * 1.05 - 0.02)  # resampling overshoot is tolerated
    model.input_check = "warn"
    try:
        with pytest.warns(UserWarning, match="takes RGB images in"):
            model(normalised)
        model.input_check = "off"
        model(normalised)
    finally:
        model.input_check = "error"


def test_top_level_functions_do_not_hide_their_packages():
    assert callable(bcosify.convert) and callable(bcosify.explain)
    assert nn.Identity in bcosify.convert.default_rules()
    from bcosify.convert import convert
    from bcosify.explain import save_colour_explanation

    assert callable(convert) and callable(save_colour_explanation)
    model, report = bcosify.convert(create("torchvision:resnet18", num_classes=3))
    e = bcosify.explain(model, torch.rand(1, 3, 32, 32))
    assert e.logits.shape == (1, 3) and report.replaced
