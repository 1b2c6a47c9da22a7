"""Every field of every saved config format, fed hostile values (issue 22).

For each format bcosify saves (a B-cos image model, an ordinary source model, a B-cos CLIP, a
B-cos text classifier), every field of its ``config.json`` (nested ones too) is replaced in turn
by huge and negative numbers, NaN and infinity, values of the wrong type, deeply nested
objects, file paths (one to a pickle that runs code when loaded), URLs and hub ids, and each
dict gains keys that loaders of other libraries act on (``auto_map``, ``weights_only``, ...).
Each case must load or be refused with a :class:`~bcosify.errors.BcosifyError` (which the
command line prints as one line); across all cases no code may run, no connection may be
attempted, and the process's peak memory stays under a cap. The sweep runs in a fresh process,
so that its peak memory is its own.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import resource
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import bcosify
from bcosify.errors import BcosifyError

MEMORY_CAP_MIB = 1000
"""How far the sweep may raise the process's peak memory above what it was once the models were
built: a tiny model takes a few MiB, a config that allocated what it asks for gigabytes."""


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def hostile_values(folder: Path) -> list[Any]:
    payload = str(folder / "payload.pkl")
    nested: Any = 1
    for _ in range(60):
        nested = {"a": nested}
    return [
        10**12,
        -(10**12),
        -1,
        0,
        1e308,
        -1e308,
        float("nan"),
        float("inf"),
        "a text",
        True,
        None,
        [],
        {},
        [1] * 100_000,
        nested,
        payload,
        "../../etc/passwd",
        "/dev/zero",
        "https://example.com/model.pth",
        "file:///etc/passwd",
        "openai/clip-vit-base-patch32",
        "hf-hub:timm/resnet18.a1_in1k",
    ]


HOSTILE_KEYS = {
    "auto_map": {"AutoModel": "payload.Model"},
    "trust_remote_code": True,
    "weights_only": False,
    "pretrained": "openai",
    "pretrained_image_path": "payload.pkl",
    "checkpoint_path": "payload.pkl",
    "pretrained_cfg_overlay": {"hf_hub_id": "timm/resnet18.a1_in1k"},
    "quantization_config": {"quant_method": "bitsandbytes"},
}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value: its objects' keys and its lists' indices."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list) and len(value) <= 16:
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))


def objects(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to an object (where a hostile key can be added)."""
    if isinstance(value, dict):
        yield path
        for key, item in value.items():
            yield from objects(item, (*path, key))


def replaced(config: dict, path: tuple[Any, ...], value: Any) -> dict:
    result = copy.deepcopy(config)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return result


def cases(config: dict, folder: Path, values_per_field: int) -> Iterator[tuple[str, dict]]:
    """The hostile configs: each field replaced, each object given each hostile key."""
    values = hostile_values(folder)
    rng = random.Random(0)
    for path in leaves(config):
        chosen = values if values_per_field >= len(values) else rng.sample(values, values_per_field)
        for value in chosen:
            yield f"{'.'.join(map(str, path))} = {str(value)[:40]}", replaced(config, path, value)
    for path in objects(config):
        for key, value in HOSTILE_KEYS.items():
            yield f"{'.'.join(map(str, path))}.{key} added", replaced(config, (*path, key), value)


def sweep(folder: Path, load: Callable[[Path], Any], values_per_field: int) -> dict[str, Any]:
    """Load every hostile variant of ``folder``'s config; what happened, counted."""
    original = json.loads((folder / "config.json").read_text())
    counts = {"cases": 0, "refused": 0, "loaded": 0}
    for name, config in cases(original, folder, values_per_field):
        (folder / "config.json").write_text(json.dumps(config))
        counts["cases"] += 1
        try:
            load(folder)
        except BcosifyError as error:
            counts["refused"] += 1
            assert str(error).strip(), name
        except Exception as error:  # anything else is a traceback on the command line
            raise AssertionError(f"{name}: {type(error).__name__}: {error}") from None
        else:
            counts["loaded"] += 1
    (folder / "config.json").write_text(json.dumps(original))
    return counts


def saved_formats(root: Path) -> dict[str, tuple[Path, Callable[[Path], Any]]]:
    """One small saved model of every format, and the function that loads it."""
    from bcosify.models import load_model, save_model

    torch.manual_seed(0)
    small = bcosify.models.create("bcosify:small_cnn", num_classes=3, widths=[4])
    formats: dict[str, tuple[Path, Callable[[Path], Any]]] = {
        "image": (bcosify.convert(small)[0].save_pretrained(root / "image"), bcosify.load),
        "source": (save_model(small, root / "source"), load_model),
    }
    try:
        vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        clip = bcosify.models.create(
            "open_clip:ViT-B-32", embed_dim=8, vision_cfg=vision, text_cfg=text
        )
        converted = bcosify.convert_clip(clip).model
        formats["clip"] = (converted.save_pretrained(root / "clip"), bcosify.load_clip)
    except ModuleNotFoundError:
        pass
    try:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=8,
            vocab_size=20,
            max_position_embeddings=16,
        )
        converted = bcosify.convert(BertForSequenceClassification(config))[0]
        formats["text"] = (converted.save_pretrained(root / "text"), bcosify.load)
    except ModuleNotFoundError:
        pass
    return formats


def run(root: Path, values_per_field: int) -> dict[str, Any]:
    """The whole sweep, with the network cut and a marker for code execution."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    results: dict[str, Any] = {}
    marker = root / "PWNED"
    formats = saved_formats(root)
    results["peak_mib_before"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    for name, (folder, load) in formats.items():
        (folder / "payload.pkl").write_bytes(pickle.dumps(Payload(str(marker))))
        results[name] = sweep(folder, load, values_per_field)
    results["code_ran"] = marker.exists()
    results["network_attempts"] = attempts
    results["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return results


def fuzz_in_a_fresh_process(tmp_path: Path, values_per_field: int) -> dict[str, Any]:
    script = (
        "import json, sys; from pathlib import Path; import test_config_fuzz as f; "
        f"print(json.dumps(f.run(Path({str(tmp_path)!r}), {values_per_field})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check(results: dict[str, Any], formats: int) -> None:
    assert results["code_ran"] is False
    assert results["network_attempts"] == []
    assert results["peak_mib"] - results["peak_mib_before"] < MEMORY_CAP_MIB, results
    swept = {k: v for k, v in results.items() if isinstance(v, dict)}
    assert len(swept) == formats, results
    for counts in swept.values():
        # most hostile values are refused; the rest are valid values of their field
        assert counts["refused"] >= 0.8 * counts["cases"], results


def _formats_available() -> int:
    import importlib.util

    return 2 + sum(importlib.util.find_spec(n) is not None for n in ("open_clip", "transformers"))


def test_hostile_configs_run_no_code_reach_no_network_and_stay_small(tmp_path):
    """A seeded sample of 3 hostile values per field (every field, every hostile key)."""
    check(fuzz_in_a_fresh_process(tmp_path, values_per_field=3), _formats_available())


@pytest.mark.slow
def test_every_hostile_value_in_every_field(tmp_path):
    check(fuzz_in_a_fresh_process(tmp_path, values_per_field=100), _formats_available())
