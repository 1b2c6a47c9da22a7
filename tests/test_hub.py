"""The Hugging Face Hub, offline: from_pretrained on local folders and on a (faked) download,
push_to_hub uploading what save_pretrained writes plus the model card. Nothing goes to the
network: the hub library's upload and download calls are replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from nets import assert_same_function, keep_signal_alive

import bcosify
from bcosify.convert import BcosCLIP, BcosModel
from bcosify.errors import CheckpointError
from bcosify.train import get_recipe

huggingface_hub = pytest.importorskip("huggingface_hub")


IMAGES = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def converted():
    original = bcosify.models.create("torchvision:resnet18", num_classes=3)
    model, report = bcosify.convert(original, class_names=["cat", "dog", "emu"])
    # converted, it outputs its logit bias alone: any weights would load back "the same"
    return keep_signal_alive(model, IMAGES), report


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HfApi.create_repo and upload_folder that record instead of calling the Hub."""
    calls: dict = {}

    class Repo:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}
        return Repo(repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / "uploaded"
        shutil.copytree(folder_path, copy)
        calls["upload_folder"] = {"repo_id": repo_id, "folder": copy, **kwargs}
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_from_pretrained_reads_a_local_folder(converted, tmp_path):
    model, _ = converted
    folder = model.save_pretrained(tmp_path / "resnet")
    loaded = BcosModel.from_pretrained(folder)
    assert_same_function(model, IMAGES, loaded)
    assert loaded.config.class_names == ["cat", "dog", "emu"]
    assert isinstance(BcosModel.from_pretrained(str(folder)), BcosModel)


def test_push_to_hub_uploads_what_save_pretrained_writes_and_a_card(converted, fake_hub, tmp_path):
    model, report = converted
    recipe = get_recipe("bcosify-cnn", epochs=2)
    metrics = {"accuracy": {"top1": 0.875, "top5": 1.0}, "split": "val"}
    result = model.push_to_hub(
        "someone/resnet18-bcos", private=True, report=report, recipe=recipe, metrics=metrics
    )
    assert result == "commit-info"
    assert fake_hub["create_repo"] == {
        "repo_id": "someone/resnet18-bcos", "private": True, "exist_ok": True,
    }  # fmt: skip
    upload = fake_hub["upload_folder"]
    assert upload["repo_id"] == "someone/resnet18-bcos" and upload["repo_type"] == "model"
    uploaded: Path = upload["folder"]
    saved = model.save_pretrained(tmp_path / "saved")
    written = sorted(p.name for p in saved.iterdir())
    assert sorted(p.name for p in uploaded.iterdir()) == sorted([*written, "README.md"])
    for name in written:  # the same bytes: push_to_hub is save_pretrained plus the card
        assert (uploaded / name).read_bytes() == (saved / name).read_bytes()
    card = (uploaded / "README.md").read_text()
    assert card == model.model_card(
        report=report, recipe=recipe, metrics=metrics, repo_id="someone/resnet18-bcos"
    )
    assert card.startswith("---\nlibrary_name: bcosify\npipeline_tag: image-classification\n")
    assert "`torchvision:resnet18` with {'num_classes': 3}" in card
    assert str(report) in card and '"name": "bcosify-cnn"' in card
    assert "| accuracy.top1 | 0.875 |" in card and "| split | val |" in card
    assert "BcosModel.from_pretrained('someone/resnet18-bcos')" in card
    assert "3 (cat, dog, emu)" in card
    # and what was uploaded loads back
    assert_same_function(model, IMAGES, BcosModel.from_pretrained(uploaded))


def test_a_repository_id_downloads_only_config_weights_and_card(converted, monkeypatch, tmp_path):
    model, _ = converted
    folder = model.save_pretrained(tmp_path / "snapshot")
    asked = {}

    def snapshot_download(**kwargs):
        asked.update(kwargs)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = BcosModel.from_pretrained("someone/resnet18-bcos", revision="v1")
    assert asked["repo_id"] == "someone/resnet18-bcos" and asked["revision"] == "v1"
    assert sorted(asked["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]
    assert_same_function(model, IMAGES, loaded)


def test_a_repository_that_cannot_be_had_is_one_clear_error(tmp_path):
    # local_files_only with an empty cache: the hub library answers without the network
    with pytest.raises(CheckpointError, match="neither a local folder nor a Hugging Face Hub"):
        BcosModel.from_pretrained("nobody/no-such-model", cache_dir=tmp_path, local_files_only=True)


def test_clip_from_pretrained_and_push_to_hub(fake_hub, tmp_path):
    open_clip = pytest.importorskip("open_clip")
    vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
    text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
    model, report = bcosify.convert_clip(open_clip.CLIP(8, vision, text))
    x = torch.rand(2, 3, 16, 16)
    keep_signal_alive(model.visual, x)
    folder = model.save_pretrained(tmp_path / "clip")
    loaded = BcosCLIP.from_pretrained(folder, model=open_clip.CLIP(8, vision, text))
    assert_same_function(model, x, loaded)
    model.push_to_hub("someone/clip-bcos", report=report)
    uploaded = fake_hub["upload_folder"]["folder"]
    assert sorted(p.name for p in uploaded.iterdir()) == [
        "README.md", "config.json", "model.safetensors",
    ]  # fmt: skip
    card = (uploaded / "README.md").read_text()
    assert "pipeline_tag: zero-shot-image-classification" in card
    assert "target=text[0]" in card and "BcosCLIP.from_pretrained('someone/clip-bcos')" in card
