"""Untrusted files and careless use: nothing runs code, downloads, hangs, exhausts memory,
overwrites an input or fails silently (issue 22). Each test names the case it stands for.

The README's "no pickles, no code" and "one line, never a traceback" rest on these tests and on
tests/test_config_fuzz.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import run_cli
from PIL import Image
from safetensors.torch import save_file

import bcosify
from bcosify.data import ImageFolderDataset, list_images, read_image
from bcosify.data.text import TextFileDataset, word_tokenizer
from bcosify.errors import (
    CheckpointError,
    ConstantOutputWarning,
    DataError,
    ExplanationError,
    InputRangeError,
    ModelSourceError,
)
from bcosify.serialization import CONFIG_FILE, WEIGHTS_FILE, atomic_write


def one_line_error(status: int, stderr: str, expected_status: int, phrase: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == expected_status, stderr
    assert "Traceback" not in stderr
    assert len([line for line in lines if "error:" in line]) == 1, stderr
    assert phrase in stderr, stderr


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM raises after ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_pickle(folder: Path, name: str = "payload.pkl") -> tuple[Path, Path]:
    """A pickle in ``folder`` whose loading creates ``folder/PWNED``; both paths."""
    marker = folder / "PWNED"
    path = folder / name
    path.write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"model": Payload(marker)}, folder / "payload.pt")
    return path, marker


def small_model(classes: int = 3) -> bcosify.BcosModel:
    torch.manual_seed(0)
    original = bcosify.models.create("bcosify:small_cnn", num_classes=classes, widths=[4, 8])
    model, _ = bcosify.convert(original)
    return model.eval()


def saved(tmp_path: Path, name: str = "model", model: torch.nn.Module | None = None) -> Path:
    return (model or small_model()).save_pretrained(tmp_path / name)


def edit_config(folder: Path, **changes) -> dict:
    config = json.loads((folder / CONFIG_FILE).read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return config


@pytest.fixture
def network_attempts(monkeypatch):
    """Every attempt to reach the network, refused and recorded."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


# 1. Code execution from config.json


HOSTILE_OPEN_CLIP = {
    "weights_only": False,
    "pretrained_image": True,
    "pretrained_image_path": "{pickle}",
}


def test_a_config_cannot_make_a_library_unpickle_a_file(tmp_path, monkeypatch):
    folder = saved(tmp_path)
    pickle_path, marker = plant_pickle(folder)
    kwargs = {k: str(v).format(pickle=pickle_path) if isinstance(v, str) else v
              for k, v in HOSTILE_OPEN_CLIP.items()}  # fmt: skip
    edit_config(folder, source="open_clip:ViT-B-32", source_kwargs=kwargs)
    for load in (bcosify.load, bcosify.BcosModel.from_pretrained):
        with pytest.raises(CheckpointError, match="unknown field"):
            load(folder)
    # through a simulated Hub repository (the pickle stored as one of its files)
    monkeypatch.setattr("bcosify.convert.hub._download", lambda *args: folder)
    with pytest.raises(CheckpointError, match="weights_only"):
        bcosify.BcosModel.from_pretrained("someone/repo")
    status, _, stderr = run_cli("explain", "--model", str(folder), "--image", str(pickle_path),
                                "--out", str(tmp_path / "out"))  # fmt: skip
    one_line_error(status, stderr, 1, "unknown field")
    # a B-cos CLIP config with the same arguments
    edit_config(folder, format="bcosify-clip/1", input_size=None)
    with pytest.raises(CheckpointError, match="unknown field"):
        bcosify.load_clip(folder)
    assert not marker.exists()


def test_a_config_cannot_name_a_folder_to_read(tmp_path):
    folder = saved(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for source in (f"hf:{elsewhere}", "torchvision:../../etc/passwd", "transformers:AutoModel"):
        edit_config(folder, source=source, source_kwargs={})
        with pytest.raises(CheckpointError, match="source"):
            bcosify.load(folder)


def test_a_transformers_config_cannot_carry_remote_code_or_loader_flags(tmp_path):
    transformers = pytest.importorskip("transformers")
    from bcosify.models.text import load_hf_text_classifier

    config = transformers.BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        vocab_size=20,
    )  # fmt: skip
    folder = tmp_path / "bert"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    pickle_path, marker = plant_pickle(folder)
    data = json.loads((folder / "config.json").read_text())
    for hostile in (
        {"auto_map": {"AutoModelForSequenceClassification": "payload.Model"}},
        {"trust_remote_code": True},
        {"quantization_config": {"quant_method": "bitsandbytes"}},
        {"_attn_implementation": "flash_attention_2"},
        {"hidden_act": "../payload"},
        {"vocab_size": 10**12},
        {"num_hidden_layers": 100000},
        {"tokenizer_class": str(pickle_path)},
    ):
        (folder / "config.json").write_text(json.dumps({**data, **hostile}))
        with pytest.raises(ModelSourceError):
            load_hf_text_classifier(folder)
    assert not marker.exists()


# 2. Config-directed downloads


@pytest.mark.parametrize(
    "source, kwargs, field",
    [
        ("torchvision:resnet18", {"weights": "IMAGENET1K_V1"}, "weights"),
        ("torchvision:resnet18", {"weights": "DEFAULT", "num_classes": 1000}, "weights"),
        ("timm:resnet18", {"pretrained": True}, "pretrained"),
        (
            "timm:resnet18",
            {"pretrained_cfg_overlay": {"hf_hub_id": "timm/resnet18.a1_in1k"}},
            "pretrained_cfg_overlay",
        ),
        ("timm:resnet18", {"checkpoint_path": "https://example.com/w.pth"}, "checkpoint_path"),
        ("open_clip:ViT-B-32", {"pretrained": "openai"}, "pretrained"),
    ],
)
def test_a_config_cannot_make_bcosify_download(tmp_path, network_attempts, source, kwargs, field):
    folder = saved(tmp_path)
    edit_config(folder, source=source, source_kwargs=kwargs)
    with pytest.raises(CheckpointError, match=field):
        bcosify.load(folder)
    assert network_attempts == []


# 3. Memory bombs from small files


def test_a_huge_class_count_is_refused_before_anything_is_built(tmp_path):
    folder = saved(tmp_path)
    edit_config(folder, source_kwargs={"num_classes": 40_000_000})
    with pytest.raises(CheckpointError, match="num_classes: 40000000 is out of range"):
        bcosify.load(folder)
    edit_config(folder, input_size=[12000, 12000], source_kwargs={"num_classes": 3})
    with pytest.raises(CheckpointError, match="input_size"):
        bcosify.load(folder)


def test_weights_are_compared_with_the_model_built_on_the_meta_device_first(tmp_path):
    """A ViT whose config asks for 2048 x 2048 images in 1-pixel patches (a position
    embedding of 3 GB) beside a small weights file: refused from the file's header, in a
    fresh process whose peak memory grows far less than building it would take."""
    pytest.importorskip("timm")
    original = bcosify.models.create(
        "timm:vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3
    )
    folder = bcosify.convert(original)[0].save_pretrained(tmp_path / "vit")
    edit_config(folder, source_kwargs={"img_size": 2048, "patch_size": 1, "depth": 1,
                                       "num_classes": 3})  # fmt: skip
    script = textwrap.dedent(
        f"""
        import bcosify, resource
        from bcosify.errors import CheckpointError
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        before = peak()
        try:
            bcosify.load({str(folder)!r})
        except CheckpointError as error:
            print("refused:", str(error).splitlines()[0])
        print("peak MiB", peak() - before)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert "refused: the weights in" in done.stdout and "do not fit the model" in done.stdout
    peak = int(done.stdout.split("peak MiB")[1])
    assert peak < 500, done.stdout  # building it would take over 3000 MiB


def test_a_huge_text_label_is_refused_at_once(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 100000000}\n')
    with deadline(10), pytest.raises(DataError, match="class indices 0 to C - 1"):
        TextFileDataset(path, word_tokenizer(["a", "b"]))


# 4. Hangs


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 4) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / name / f"{i}.png")
    return root


def test_link_loops_are_followed_once_and_counted(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "a" / "up").symlink_to("..")
    (root / "a" / "again").symlink_to("..")
    (root / "b" / "self").symlink_to(".")
    with deadline(60), pytest.warns(UserWarning, match="entries skipped"):
        data = ImageFolderDataset(root, image_size=16)
    # 8 images, each counted once; without the cycle check "self" alone made 8 into 168
    assert len(data) == 8 and len({p.resolve() for p, _ in data.samples}) == 8
    assert "skipped" in data.summary()


def test_a_pipe_named_like_an_image_blocks_nothing(tmp_path):
    root = image_folder(tmp_path / "images")
    os.mkfifo(root / "a" / "pipe.png")
    with deadline(60):
        listing = list_images(root)
        assert [p.name for p in listing.skipped] == ["pipe.png"]
        with pytest.warns(UserWarning, match="pipe.png"):
            data = ImageFolderDataset(root, image_size=16, validate=False)
        assert data.validate(decode=False) == []
        with pytest.raises(DataError, match="not a regular file"):
            read_image(root / "a" / "pipe.png")
        model = saved(tmp_path)
        status, _, stderr = run_cli("explain", "--model", str(model), "--image",
                                    str(root / "a"), "--out", str(tmp_path / "out"))  # fmt: skip
    assert status == 0 and "pipe.png" in stderr, stderr


# 5. Data loss


def digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_convert_does_not_overwrite_its_input(tmp_path):
    from bcosify.models import save_model

    original = save_model(
        bcosify.models.create("bcosify:small_cnn", num_classes=3, widths=[4]), tmp_path / "orig"
    )
    before = digest(original)
    for out in (original, original / "inside"):
        status, _, stderr = run_cli("convert", "--model", str(original), "--out", str(out))
        one_line_error(status, stderr, 2, "--model")
    status, _, stderr = run_cli("convert", "--model", str(original), "--out", str(tmp_path))
    one_line_error(status, stderr, 2, "contains --model")
    assert digest(original) == before


def test_explain_does_not_write_through_a_planted_link(tmp_path):
    model = saved(tmp_path)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_colour.png").symlink_to(victim)
    status, _, stderr = run_cli(
        "explain", "--model", str(model), "--image", str(tmp_path / "x.png"), "--out", str(out)
    )
    assert status == 0, stderr
    assert victim.read_text() == "precious"
    assert not (out / "x_colour.png").is_symlink()
    assert Image.open(out / "x_colour.png").size[0] > 0
    status, _, stderr = run_cli(
        "explain", "--model", str(model), "--image", str(tmp_path / "x.png"), "--out", str(model)
    )
    one_line_error(status, stderr, 2, "is --model")


def test_two_processes_cannot_write_into_one_output_folder(tmp_path):
    model = saved(tmp_path)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from bcosify.folders import hold_folder
            with hold_folder({str(out)!r}):
                print("held", flush=True)
                time.sleep(60)
            """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (
            ["explain", "--model", str(model), "--image", str(tmp_path / "x.png")],
            ["convert", "--model", "bcosify:small_cnn", "--num-classes", "3"],
        ):
            status, _, stderr = run_cli(*argv, "--out", str(out))
            one_line_error(
                status, stderr, 1, f"in use by another bcosify process (pid {holder.pid}"
            )
    finally:
        holder.kill()
        holder.wait()
    assert not list(out.iterdir())  # no lock file left behind either


def test_a_save_interrupted_between_its_two_files_is_refused_on_load(tmp_path):
    folder = saved(tmp_path)
    other = small_model()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(1.0)
    # what a process killed after writing the new weights and before the new config leaves
    state = {k: v.contiguous() for k, v in other.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda path: save_file(state, str(path)))
    with pytest.raises(CheckpointError, match="SHA-256"):
        bcosify.load(folder)


# 6. Silently wrong


def test_photos_are_read_upright_and_float_tiffs_are_scaled(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white: after a 90 degree turn, the top half
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (3, 40, 20)
    assert upright[:, :20].float().mean() > 200 and upright[:, 20:].float().mean() < 50
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    decoded = read_image(tmp_path / "float.tiff")
    assert decoded.max() == 255 and abs(float(decoded.float().mean()) - 127.5) < 2


@pytest.mark.parametrize("b", [1e308, 0.5, "2", True])
def test_out_of_range_options_in_a_config_are_refused(tmp_path, b):
    folder = saved(tmp_path)
    edit_config(folder, options={"b": b})
    with pytest.raises(CheckpointError, match=r"options\.b"):
        bcosify.load(folder)


def test_infinity_is_not_json(tmp_path):
    folder = saved(tmp_path)
    text = (folder / CONFIG_FILE).read_text().replace('"b": 2.0', '"b": Infinity')
    (folder / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match="Infinity is not JSON"):
        bcosify.load(folder)


def test_non_finite_weights_are_refused(tmp_path):
    model = small_model()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    folder = saved(tmp_path, model=model)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        bcosify.load(folder)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    image, out = str(tmp_path / "x.png"), str(tmp_path / "out")
    status, _, stderr = run_cli("explain", "--model", str(folder), "--image", image, "--out", out)
    one_line_error(status, stderr, 1, "non-finite weights")
    weights = tmp_path / "nan.safetensors"
    state = bcosify.models.create("bcosify:small_cnn", num_classes=3, widths=[4]).state_dict()
    save_file({k: v * float("nan") for k, v in state.items()}, str(weights))
    with pytest.raises(ModelSourceError, match="NaN"):
        bcosify.models.create("bcosify:small_cnn", weights=str(weights), num_classes=3, widths=[4])


def test_class_names_of_the_wrong_length_are_refused(tmp_path):
    folder = saved(tmp_path)
    edit_config(folder, class_names=["cat", "dog"])  # the model has 3 outputs
    with pytest.raises(CheckpointError, match="2 classes, but the model it describes has 3"):
        bcosify.load(folder)


def test_integer_and_boolean_images_are_refused_not_cast():
    model = small_model()
    for images in (torch.ones(2, 3, 16, 16, dtype=torch.long), torch.ones(2, 3, 16, 16).bool()):
        with pytest.raises(InputRangeError, match=str(images.dtype)):
            model(images)


def test_a_missing_text_is_refused_not_read_as_none(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "a good film", "label": "pos"}\n{"text": null, "label": "neg"}\n')
    with pytest.raises(DataError, match="row 2: the text must be a string"):
        TextFileDataset(path, word_tokenizer(["good", "film"]))


def test_evaluate_and_explain_default_to_the_size_the_model_records(tmp_path):
    model = small_model(10)
    model.config.input_size = (32, 32)
    folder = saved(tmp_path, model=model)
    report = tmp_path / "results.json"
    argv = ["evaluate", "--model", str(folder), "--data", "synthetic", "--num-examples", "20",
            "--images", "4", "--grids", "1", "--no-progress"]  # fmt: skip
    status, _, stderr = run_cli(*argv, "--out", str(report))
    assert status == 0, stderr
    assert json.loads(report.read_text())["settings"]["image_size"] == 32
    status, _, stderr = run_cli(*argv, "--image-size", "48", "--out", str(report))
    assert status == 0 and "differs from the 32 px the model records" in stderr, stderr


def constant_model(classes: int = 3) -> bcosify.BcosModel:
    """A converted model whose classifier is zero: every output is the logit bias."""
    model = small_model(classes)
    with torch.no_grad():
        model.network.fc.weight.zero_()
    return model


def test_a_model_that_outputs_its_constants_is_a_warning_everywhere(tmp_path):
    model = constant_model()
    images = torch.rand(4, 3, 32, 32)
    with pytest.warns(ConstantOutputWarning, match="constants alone"):
        bcosify.explain(model, images)
    data = torch.utils.data.TensorDataset(torch.rand(8, 3, 32, 32), torch.arange(8) % 3)
    recipe = bcosify.train.get_recipe(
        "bcosify-cnn", epochs=1, batch_size=4, augment="none", lr=1e-12, image_size=32
    )
    with pytest.warns(ConstantOutputWarning, match="the trained model's outputs do not depend"):
        bcosify.train.train(model, data, recipe, tmp_path / "run", progress=False)
    live = small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstantOutputWarning)
        bcosify.explain(live, images)  # a converted model that is alive warns of nothing
    folder = saved(tmp_path, model=constant_model(10))
    argv = ["evaluate", "--model", str(folder), "--data", "synthetic", "--num-examples", "12",
            "--images", "4", "--grids", "1", "--no-progress", "--image-size", "32"]  # fmt: skip
    status, stdout, stderr = run_cli(*argv)
    assert status == 0 and "warning: the model" in stderr and "calibrate" in stderr, stderr
    # no image is classified confidently, and the table says so instead of "n/a" alone
    assert "bcos: no pointing game:" in stdout and "images qualify" in stdout, stdout


# 7. One line, never a traceback


def test_broken_files_are_one_line_on_the_command_line(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    folder = saved(tmp_path)
    cases = [
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        (b'{"format": "bcosify-model/1", "source": "\xff\xfe"}', "not UTF-8"),
    ]
    image = ["--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    for content, phrase in cases:
        path = folder / CONFIG_FILE
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        status, _, stderr = run_cli("explain", "--model", str(folder), *image)
        one_line_error(status, stderr, 1, phrase)
    folder = saved(tmp_path, "sized")
    edit_config(folder, input_size=[-5, -5])
    status, _, stderr = run_cli("explain", "--model", str(folder), *image)
    one_line_error(status, stderr, 1, "input_size[0]: -5 is out of range")
    status, _, stderr = run_cli("explain", "--model", str(tmp_path / "nonexist"), *image)
    one_line_error(status, stderr, 2, "no such folder")
    status, _, stderr = run_cli("evaluate", "--model", str(folder), "--data", "synthetic",
                                "--explainers", "foo")  # fmt: skip
    one_line_error(status, stderr, 2, "unknown foo")


def test_non_utf8_and_long_text_files(tmp_path):
    tokenizer = word_tokenizer(["good", "bad"])
    path = tmp_path / "texts.jsonl"
    path.write_bytes(b'{"text": "good \xff", "label": 0}\n{"text": "bad", "label": 1}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        TextFileDataset(path, tokenizer)
    long = tmp_path / "long.csv"
    long.write_text(f"text,label\n{'good ' * 40000},pos\nbad,neg\n")  # 200000 characters
    assert len(TextFileDataset(long, tokenizer, max_length=8)) == 2


# 8. Clear library errors


@pytest.mark.parametrize(
    "case",
    ["float target (3,)", "float targets (4, 3)", "str target", "empty batch", "float64 input",
     "bfloat16 model"],
)  # fmt: skip
def test_explanation_mistakes_are_explanation_errors(case):
    model = small_model()
    images = torch.rand(4, 3, 16, 16)
    arguments = {
        "float target (3,)": (images, torch.tensor([0.0, 1.0, 2.0])),
        "float targets (4, 3)": (images, torch.rand(4, 3)),
        "str target": (images, "cat"),
        "empty batch": (images[:0], None),
        "float64 input": (images.double(), None),
        "bfloat16 model": (images, None),
    }[case]
    if case == "bfloat16 model":
        model = model.to(torch.bfloat16)
    with pytest.raises(ExplanationError):
        bcosify.explain(model, *arguments)
