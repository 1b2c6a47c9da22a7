"""CLIP: image towers of open_clip and transformers, distillation, zero-shot, text prompts.

Every model is tiny and random: nothing is downloaded.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from nets import assert_same_function, keep_signal_alive
from test_convert import randomise_statistics
from test_convert_vit import randomise
from torch import nn

import bcosify
from bcosify.cli.main import main
from bcosify.convert import BcosCLIP, convert_clip, load_clip
from bcosify.data import SyntheticShapes
from bcosify.errors import CheckpointError, ExplanationError, ModelSourceError
from bcosify.evaluate import class_embeddings, zero_shot_evaluation
from bcosify.models import create
from bcosify.models.clip import ClipModel, as_clip
from bcosify.nn import BcosAttentionPool2d, BcosLinear, BcosQuickGELU
from bcosify.train import get_recipe
from bcosify.train.distill import (
    Distillation,
    DistillationConfig,
    distill,
    siglip_distillation_loss,
)

open_clip = pytest.importorskip("open_clip")

TEXT_CFG = {"layers": 1, "width": 16, "heads": 2, "context_length": 12}
# source, architecture arguments, image size
OPEN_CLIP = {
    "resnet": (
        "open_clip:RN50",
        {"vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "head_width": 16, "image_size": 64}},
        64,
    ),
    "vit": (
        "open_clip:ViT-B-32",
        {
            "vision_cfg": {
                "layers": 2,
                "width": 32,
                "head_width": 16,
                "patch_size": 8,
                "image_size": 32,
            },
            "quick_gelu": True,
        },
        32,
    ),
}
PROMPT = "a photo of a dog"


def tolerance_check(value: torch.Tensor, reference: torch.Tensor, relative: float = 1e-4) -> None:
    error = (value - reference).norm() / reference.norm()
    assert error <= relative, float(error)


@functools.cache
def open_clip_model(kind: str) -> nn.Module:
    source, kwargs, _ = OPEN_CLIP[kind]
    with torch.random.fork_rng():  # the same weights whichever tests ran before
        torch.manual_seed(0)
        model = create(source, embed_dim=16, text_cfg=TEXT_CFG, **kwargs)
    return randomise_statistics(randomise(model))


def images(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def normalised(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    info = model.bcosify_source
    mean = torch.tensor(info.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(info.input_std).view(1, -1, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("kind", sorted(OPEN_CLIP))
def test_open_clip_towers_are_equivalent_at_b1_with_biases(kind):
    model = open_clip_model(kind)
    x = images(OPEN_CLIP[kind][2])
    with torch.no_grad():
        reference = model.encode_image(normalised(x, model))
        for encoding in ("fold", "paper"):
            same, report = bcosify.convert(model, b=1.0, keep_bias=True, encoding=encoding)
            tolerance_check(same(x), reference)
        # through convert_clip, the pair agrees with its own original too
        pair, _ = convert_clip(model, b=1.0, keep_bias=True)
        tolerance_check(pair(x), pair.original.encode_image(x))
    assert "CLIP image tower" in "\n".join(report.notes)
    assert same.logit_bias.__class__ is nn.Identity  # embeddings get no logit bias


def test_resnet_tower_attention_pool_and_vit_projection_become_bcos():
    resnet, _ = bcosify.convert(open_clip_model("resnet"))
    pools = [m for m in resnet.modules() if isinstance(m, BcosAttentionPool2d)]
    assert len(pools) == 1 and isinstance(pools[0].c_proj, BcosLinear)
    vit, report = bcosify.convert(open_clip_model("vit"))
    assert isinstance(vit.network.proj, BcosLinear)  # x @ proj became a B-cos layer
    assert any(isinstance(m, BcosQuickGELU) for m in vit.modules())
    assert any("x @ proj" in note for note in report.notes)
    assert {c.split(":")[0] for c in report.constants} == {
        "network.class_embedding",
        "network.positional_embedding",
    }


@functools.cache
def clip_pair(kind: str) -> BcosCLIP:
    model, _ = convert_clip(open_clip_model(kind))
    keep_signal_alive(model.visual, images(OPEN_CLIP[kind][2], n=4, seed=3))
    return model


@pytest.mark.parametrize(
    ("kind", "constants"),
    [
        ("resnet", {"visual.network.attnpool.positional_embedding"}),
        (
            "vit",
            {
                "visual.network.class_embedding",
                "visual.network.positional_embedding",
            },
        ),
    ],
)
def test_text_prompted_explanations_are_complete(kind, constants):
    model = clip_pair(kind)
    x = images(OPEN_CLIP[kind][2])
    text = model.encode_text([PROMPT])[0]
    e = bcosify.explain(model, x, target=text)
    with torch.no_grad():
        cosine = torch.cosine_similarity(model(x), text[None], dim=1)
    torch.testing.assert_close(e.scores, cosine)
    assert set(e.constants) == constants
    assert (e.residual.abs() <= 1e-4 * e.scores.abs()).all(), e.residual
    # the pixels carry a real share of the score, not only the constants
    assert (e.contributions.flatten(1).sum(1).abs() > 1e-3 * e.scores.abs()).all()
    assert all(p.grad is None for p in model.parameters())


def test_embedding_targets_are_checked():
    model = clip_pair("vit")
    x = images(32)
    with pytest.raises(ExplanationError, match="embedding"):
        bcosify.explain(model, x, target=torch.ones(5))
    with pytest.raises(ExplanationError, match="got 3 target embeddings"):
        bcosify.explain(model, x, target=torch.ones(3, 16))
    per_example = model.encode_text([PROMPT, "a photo of a cat"])
    e = bcosify.explain(model, x, target=per_example)
    assert e.targets is None and e.scores.shape == (2,)


def character_tokenizer(tmp_path):
    """A character-level CLIP tokenizer written to ``tmp_path``, and its vocabulary size."""
    transformers = pytest.importorskip("transformers")
    characters = "abcdefghijklmnopqrstuvwxyz."
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in characters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    files = tmp_path / "tokenizer-files"
    files.mkdir()
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt")), vocab


def hf_clip_folder(tmp_path):
    """A tiny random CLIPModel saved with a character-level tokenizer, as from_pretrained reads."""
    transformers = pytest.importorskip("transformers")
    tokenizer, vocab = character_tokenizer(tmp_path)
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": len(vocab),
            "max_position_embeddings": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = randomise(transformers.CLIPModel(config))
    folder = tmp_path / "hf-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


HF_CLIP = ("CLIPModel", "CLIPVisionModel")
"""The transformers classes that test_hf_clip_vision_models_are_equivalent_and_explained
converts: a dual model (its image tower) and a vision model (test_families reads them)."""


def test_hf_clip_vision_models_are_equivalent_and_explained(tmp_path):
    import transformers

    model = create(f"hf:{hf_clip_folder(tmp_path)}")
    dual, vision_class = HF_CLIP
    assert type(model).__name__ == dual
    x = images(32)
    with torch.no_grad():
        features = model.get_image_features(pixel_values=normalised(x, model))
        reference = getattr(features, "pooler_output", features)
        same, report = bcosify.convert(model, b=1.0, keep_bias=True)
        tolerance_check(same(x), reference)
        # the vision model on its own: its pooler_output
        vision = getattr(transformers, vision_class)(model.config.vision_config)
        vision.load_state_dict(model.vision_model.state_dict())
        mean, std = model.bcosify_source.input_mean, model.bcosify_source.input_std
        same_vision, _ = bcosify.convert(
            vision, input_mean=mean, input_std=std, b=1.0, keep_bias=True
        )
        pooled = vision(pixel_values=normalised(x, model)).pooler_output
        tolerance_check(same_vision(x), pooled)
    assert "HFSelfAttention" in str(report)
    pair, _ = convert_clip(model)
    keep_signal_alive(pair.visual, images(32, n=4, seed=3))
    text = pair.encode_text([PROMPT])
    e = bcosify.explain(pair, x, target=text[0])
    assert set(e.constants) == {
        "visual.network.vision_model.embeddings.class_embedding",
        "visual.network.vision_model.embeddings.position_embedding.weight",
    }
    assert (e.residual.abs() <= 1e-4 * e.scores.abs()).all(), e.residual


def test_model_sources_load_local_files_and_never_download(tmp_path):
    from safetensors.torch import save_file

    source, kwargs, size = OPEN_CLIP["vit"]
    trained = open_clip_model("vit")
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    loaded = create(source, pretrained=str(weights), embed_dim=16, text_cfg=TEXT_CFG, **kwargs)
    x = normalised(images(size), loaded)
    torch.testing.assert_close(loaded.encode_image(x), trained.encode_image(x))
    with pytest.raises(ModelSourceError, match="does not download"):
        create(source, pretrained="openai")
    with pytest.raises(ModelSourceError, match="not a local model folder"):
        create(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ModelSourceError, match="not a CLIP model"):
        as_clip(nn.Linear(2, 2))


def test_save_load_and_the_prompt_flag_of_bcosify_explain(tmp_path, capsys):
    from PIL import Image

    model = clip_pair("resnet")
    saved = model.save_pretrained(tmp_path / "bcos-clip")
    loaded = load_clip(saved)
    x = images(64)
    assert_same_function(model, x, loaded, rtol=1.3e-6, atol=1e-5)
    torch.testing.assert_close(loaded.encode_text([PROMPT]), model.encode_text([PROMPT]))
    tower, _ = bcosify.convert(open_clip_model("resnet"))  # the tower alone loads by its source
    tower_folder = keep_signal_alive(tower, x).save_pretrained(tmp_path / "tower")
    assert_same_function(tower, x, bcosify.load(tower_folder), rtol=1.3e-6, atol=1e-5)
    with pytest.raises(CheckpointError, match=r"bcosify\.load"):
        load_clip(tower_folder)

    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "i.png")
    out = tmp_path / "explained"
    argv = ["explain", "--model", str(saved), "--image", str(tmp_path / "i.png"), "--out", str(out)]
    assert main([*argv, "--prompt", PROMPT]) == 0
    printed = capsys.readouterr().out
    assert f"prompt '{PROMPT}', cosine similarity" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "i_colour.png",
        "i_contributions.png",
        "i_figure.png",
    ]
    assert main(argv) == 2  # a CLIP model needs a prompt
    assert "--prompt" in capsys.readouterr().err

    report = tmp_path / "zero-shot.json"
    data = ["--data", "synthetic", "--image-size", "64", "--num-examples", "10", "--images", "4"]
    argv = ["evaluate", "--model", str(saved), *data, "--probe-split", "train"]
    assert main([*argv, "--out", str(report)]) == 0
    results = json.loads(report.read_text())
    assert set(results["zero_shot"]) == {"teacher", "student"}
    for probe in results["linear_probe"].values():  # the teacher's and the student's features
        assert 0 <= probe["top1"] <= 1 and probe["num_train"] == 10 and probe["num_test"] == 10
    assert 0 <= results["mask_localisation"] <= 1


def test_one_distillation_step_lowers_the_loss(tmp_path):
    data = SyntheticShapes(8, image_size=32, seed=0)
    batch = torch.stack([data[i][0] for i in range(len(data))])
    for loss in ("cosine", "siglip"):
        model, _ = convert_clip(open_clip_model("vit"))
        objective = Distillation(model.original, DistillationConfig(loss))
        with torch.no_grad():
            before = float(objective(model(batch), batch, None))
        recipe = get_recipe("bcosify-clip", epochs=1, batch_size=8, lr=1e-3, image_size=32)
        result = distill(model, data, tmp_path / loss, recipe=recipe, loss=loss, progress=False)
        with torch.no_grad():
            after = float(objective(result.model(batch), batch, None))
        assert result.train.step == 1 and after < before, (loss, before, after)
        assert json.loads((tmp_path / loss / "distillation.json").read_text())["loss"] == loss
        assert all(not p.requires_grad for p in result.model.original.parameters())
    with pytest.raises(CheckpointError, match="another loss"):
        distill(model, data, tmp_path / "siglip", recipe=recipe, loss="cosine", progress=False)


def test_bcosify_train_distils_a_clip_model_from_a_folder_of_images(tmp_path, capsys):
    from PIL import Image

    model = clip_pair("resnet")
    saved = model.save_pretrained(tmp_path / "bcos-clip")
    for i, pixels in enumerate(images(64, n=8, seed=3)):  # nested folders, no labels needed
        folder = tmp_path / "images" / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        array = (pixels.permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(folder / f"{i}.png")
    out = tmp_path / "run"
    argv = ["train", "--model", str(saved), "--data", str(tmp_path / "images")]
    argv += ["--recipe", "bcosify-clip", "--image-size", "64", "--batch-size", "4"]
    argv += ["--epochs", "1", "--lr", "1e-3", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "finished after 2 steps" in capsys.readouterr().out
    assert json.loads((out / "distillation.json").read_text())["loss"] == "cosine"
    distilled = load_clip(out / "clip")
    x = images(64)
    assert not torch.allclose(distilled(x), model(x))  # the tower trained
    torch.testing.assert_close(distilled.encode_text([PROMPT]), model.encode_text([PROMPT]))


def test_siglip_loss_is_the_pairwise_sigmoid_loss():
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    s = torch.nn.functional.normalize(student, dim=-1)
    t = torch.nn.functional.normalize(teacher, dim=-1)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            logit = 10.0 * float(s[i] @ t[j]) - 10.0
            label = 1.0 if i == j else -1.0
            expected -= float(torch.nn.functional.logsigmoid(torch.tensor(label * logit)))
    assert float(siglip_distillation_loss(student, teacher)) == pytest.approx(expected / 3)


def test_zero_shot_evaluation_runs_and_agrees_at_b1(tmp_path):
    data = SyntheticShapes(20, image_size=32, seed=0, split="val")
    same, _ = convert_clip(open_clip_model("vit"), b=1.0, keep_bias=True)
    result = zero_shot_evaluation(same, data, templates=["a photo of a {}.", "a {} shape."])
    # an equivalent tower classifies exactly as the original does
    assert result.student == result.teacher and 0 <= result.teacher["top1"] <= 1
    assert result.num_examples == 20 and "B-cos" in str(result)
    bcos = zero_shot_evaluation(clip_pair("vit"), data, class_names=list(data.classes))
    assert set(bcos.student) == {"top1", "top5"}
    classes = class_embeddings(same.encode_text, data.classes)
    assert classes.shape == (len(data.classes), 16)
    torch.testing.assert_close(classes.norm(dim=1), torch.ones(len(data.classes)))


class BagOfWords(ClipModel):
    """A user's own dual encoder: a small CNN and a bag of words."""

    def __init__(self) -> None:
        super().__init__((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.words = {"dog": 0, "cat": 1, "photo": 2}
        self.tower = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.projection = nn.Linear(8, 4)
        self.text = nn.EmbeddingBag(len(self.words), 4)

    @property
    def visual(self) -> nn.Module:
        return nn.Sequential(self.tower, self.projection)

    def encode_text(self, prompts):
        ids = [torch.tensor([self.words[w] for w in p.split() if w in self.words]) for p in prompts]
        offsets = torch.tensor([0, *torch.tensor([len(i) for i in ids]).cumsum(0)[:-1].tolist()])
        return self.text(torch.cat(ids), offsets)


def test_a_users_own_dual_encoder_converts_and_explains():
    torch.manual_seed(0)
    user = randomise(BagOfWords())
    x = images(16)
    same, _ = convert_clip(user, b=1.0, keep_bias=True)
    tolerance_check(same(x), user.encode_image(x))
    model, report = convert_clip(user)
    assert "logit_bias" not in "\n".join(report.constants)
    e = bcosify.explain(model, x, target=model.encode_text(["photo dog"])[0])
    assert e.constants == {} and (e.residual.abs() <= 1e-4 * e.scores.abs()).all()


def test_the_clip_benchmark_runs_and_writes_its_section(tmp_path, capsys, monkeypatch):
    import importlib
    import sys
    from pathlib import Path

    # imported as the scripts import each other: from their folder
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        bench = importlib.import_module("bench_clip")
        docs = tmp_path / "benchmarks.md"
        assert bench.main(["--quick", "--write", str(docs)]) == 0
    finally:
        for name in ("common", "bench_clip"):
            sys.modules.pop(name, None)
    text = docs.read_text()
    assert "<!-- bench_clip:start -->" in text and "<!-- bench_clip:end -->" in text
    rows = [line for line in text.splitlines() if line.startswith("| B-cos")]
    assert len(rows) == 4 and "zero-shot top-1" in capsys.readouterr().out
