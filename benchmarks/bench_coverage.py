"""Coverage of whole registries: which of timm's model families and transformers' text classifiers
``bcosify.convert`` converts exactly.

For timm, the smallest architecture of every family (``timm.list_modules()``; parameters counted
on the meta device); for transformers, every model type of the sequence-classification auto
mapping, built small from its config class. All with random weights (random batch-norm
statistics and norm affines, so that no norm is an identity) at a small input. A case converts
*exactly* when

- equivalence: the conversion at B = 1 with biases kept gives the original's outputs
  (``|difference| <= 1e-4 * max |original|``), and
- completeness: the conversion with the defaults (B = 2), its layers rescaled to unit output RMS
  (``bcosify.calibrate(..., method="lsuv")``; deep random B-cos networks underflow otherwise),
  explains completely (``|residual| <= 1e-4 *`` the sum of absolute contributions) with a live
  signal (contributions of at least 1e-2 of the score, logits that differ across inputs by more
  than 1e-2), for the class whose logit the input moves most from the logit bias.

Each case runs in its own process with a time limit, one thread, and its result is cached under
``.bench/coverage`` keyed by the case and a hash of bcosify's source and this script, so that an
interrupted sweep resumes and a rerun after a code change measures again. Families that cannot
be built (or not small) are listed apart and not counted.

    .venv/bin/python benchmarks/bench_coverage.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from common import command_line, load_average, machine, publish
from torch import nn

SECTION = "bench_coverage"
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".bench" / "coverage"
SIZE = 64  # image side of the small input (models with a fixed size are built at it)
TIMEOUT = 300  # seconds a case may take
# larger models are not "small": a timm family's smallest model, a text model after shrinking
MAX_IMAGE_PARAMETERS, MAX_TEXT_PARAMETERS = 150_000_000, 20_000_000
TOLERANCE = 1e-4
MEASUREMENT = 2  # the version of how a case is built and checked: change it when that changes
LIVE = 1e-2
# the targets of the coverage issue
TIMM_TARGET, TEXT_TARGET = 0.9, 0.8

# Small values for the size fields of transformers configs (by their names in any family).
SMALL_TEXT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "embedding_size": 32,
    "d_model": 32,
    "intermediate_size": 64,
    "ffn_dim": 64,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "d_ff": 64,
    "n_inner": 64,
    "hidden_dim": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_attention_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "d_kv": 8,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 64,
    "rotary_dim": 8,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "num_labels": 3,
    "pad_token_id": 0,
}


# ---------------------------------------------------------------------------------------------
# the cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One model to measure: ``library`` ("timm" or "transformers"), its family (timm module or
    transformers model type) and the architecture (timm model name or transformers class)."""

    library: str
    family: str
    architecture: str

    @property
    def key(self) -> str:
        return f"{self.library}:{self.family}:{self.architecture}"


def source_hash() -> str:
    """A hash of bcosify's source and of :data:`MEASUREMENT`: cached results of other code are
    stale (the report's code may change without measuring again)."""
    digest = hashlib.sha256(f"measurement {MEASUREMENT}".encode())
    package = ROOT / "src" / "bcosify"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def meta_parameters(build: Callable[[], nn.Module]) -> int:
    """Parameters of the model ``build`` makes, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def smallest_timm_models() -> dict[str, tuple[str | None, str]]:
    """``{family: (smallest model or None, how many models / why none)}``, cached per timm
    version (counting 1300 models' parameters takes minutes)."""
    import timm

    path = CACHE / f"timm-{timm.__version__}-smallest.json"
    if path.exists():
        return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}
    found: dict[str, tuple[str | None, str]] = {}
    for family in timm.list_modules():
        names = timm.list_models(module=family)
        sizes, errors = {}, []
        for name in names:
            try:
                sizes[name] = meta_parameters(lambda n=name: timm.create_model(n))
            except Exception as error:  # a model that does not build: the family's others may
                errors.append(f"{name}: {type(error).__name__}: {error}")
        if sizes:
            name = min(sizes, key=lambda n: (sizes[n], n))
            found[family] = (name, f"{sizes[name] / 1e6:.2f}M parameters, of {len(names)}")
        else:
            found[family] = (None, "no model builds: " + (errors[0] if errors else "none listed"))
        print(f"timm {family}: {found[family]}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1))
    return found


def timm_cases() -> tuple[list[Case], dict[str, str]]:
    """One case per timm family, and the families without a buildable model (with why)."""
    cases, apart = [], {}
    for family, (name, note) in smallest_timm_models().items():
        if name is None:
            apart[f"timm:{family}"] = note
        else:
            cases.append(Case("timm", family, name))
    return cases, apart


def text_cases() -> list[Case]:
    """One case per model type of transformers' sequence-classification auto mapping."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as MAPPING,
    )

    return [Case("transformers", kind, name) for kind, name in MAPPING.items()]


# ---------------------------------------------------------------------------------------------
# building models small


class NotBuildable(Exception):
    """The case's model cannot be built (or not small): listed apart, not counted."""


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and norm affines (timm zero-initialises some), layer
    scales (CaiT's start at 1e-5, which switches every residual branch off) and weight
    matrices initialised near zero (gMLP's spatial gate: std 1e-6, its bias 1, which the
    defaults remove), in place: the values a trained network has, not those of its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.named_parameters():
            scale = name.rpartition(".")[2].startswith(("gamma", "layer_scale", "ls"))
            if scale and value.ndim == 1 and 0 < float(value.abs().max()) < 1e-3:
                value.uniform_(0.5, 1.5, generator=generator)
            if value.ndim >= 2 and float(value.abs().max()) < 1e-3:
                bound = 1 / value[0].numel() ** 0.5  # nn.Linear's and nn.Conv2d's own init
                value.uniform_(-bound, bound, generator=generator)
        for module in model.modules():
            if isinstance(getattr(module, "running_var", None), torch.Tensor):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
            if "norm" not in type(module).__name__.lower():
                continue
            for name, low, high in (("weight", 0.5, 1.5), ("bias", -0.5, 0.5)):
                value = getattr(module, name, None)
                if isinstance(value, nn.Parameter) and value.is_floating_point():
                    value.uniform_(low, high, generator=generator)
    return model.eval()


def build_timm(name: str, size: int) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """A timm model with random weights, images in [0, 1] it takes, and its normalisation.

    First at ``size`` x ``size`` (passed as ``img_size`` to models that have one), else at the
    model's own input size.
    """
    import timm

    cfg = timm.get_pretrained_cfg(name)
    default = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    mean = tuple(getattr(cfg, "mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(cfg, "std", None) or (0.229, 0.224, 0.225))
    if len(mean) != default[0]:
        mean, std = mean[:1] * default[0], std[:1] * default[0]
    count = meta_parameters(lambda: timm.create_model(name, num_classes=5))
    if count > MAX_IMAGE_PARAMETERS:
        raise NotBuildable(f"its smallest model has {count / 1e6:.0f}M parameters")
    problems = []
    for side, kwargs in (
        (size, {"img_size": size}),
        (size, {}),
        (default[1], {}),
    ):
        try:
            torch.manual_seed(0)
            model = randomise(timm.create_model(name, num_classes=5, **kwargs))
            x = torch.rand(2, default[0], side, side)
            with torch.no_grad():
                out = model(normalise(x, mean, std))
            if out.ndim != 2 or not torch.isfinite(out).all():
                raise ValueError(f"output of shape {tuple(out.shape)}, finite: no")
            options = {"input_mean": mean, "input_std": std, "input_size": (side, side)}
            return model, x, options
        except Exception as error:
            problems.append(f"{side}px {kwargs or ''}: {type(error).__name__}: {error}")
    raise NotBuildable("; ".join(problems))


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    mean_, std_ = (torch.tensor(v, dtype=x.dtype).view(shape) for v in (mean, std))
    return (x - mean_) / std_


def small_config(config_class: type) -> Any:
    """``config_class`` with the small values of :data:`SMALL_TEXT` for the fields it has (by
    name or through its ``attribute_map``), its sub-configs made small the same way."""
    fields = (
        {f.name for f in dataclasses.fields(config_class)}
        if dataclasses.is_dataclass(config_class)
        else set()
    )
    aliases = getattr(config_class, "attribute_map", {}) or {}
    kwargs: dict[str, Any] = {}
    for name, value in SMALL_TEXT.items():
        target = name if name in fields else aliases.get(name)
        if target in fields and target not in kwargs:
            kwargs[target] = value
    for name, sub in (getattr(config_class, "sub_configs", None) or {}).items():
        if name in fields and isinstance(sub, type) and sub.__name__ != "AutoConfig":
            kwargs[name] = small_config(sub).to_dict()
    return config_class(**kwargs)


def build_text(case: Case) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """A transformers sequence classifier built small with random weights, and token ids."""
    import transformers
    from transformers import CONFIG_MAPPING

    try:
        config = small_config(CONFIG_MAPPING[case.family])
        model_class = getattr(transformers, case.architecture)
        count = meta_parameters(lambda: model_class(config))
        if count > MAX_TEXT_PARAMETERS:
            raise NotBuildable(f"{count / 1e6:.1f}M parameters after shrinking its config")
        torch.manual_seed(0)
        model = randomise(model_class(config))
        vocab = int(getattr(config, "vocab_size", None) or SMALL_TEXT["vocab_size"])
        ids = torch.randint(1, min(vocab, SMALL_TEXT["vocab_size"]), (2, 8))
        eos = getattr(config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) and eos else eos
        if isinstance(eos, int) and 0 <= eos < vocab:
            # encoder-decoder classifiers read the last <eos>: one per text, at its end
            ids[ids == eos] = 1 if eos != 1 else 2
            ids[:, -1] = eos
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except NotBuildable:
        raise
    except Exception as error:
        raise NotBuildable(f"{type(error).__name__}: {error}") from error
    return model, ids, {}


# ---------------------------------------------------------------------------------------------
# measuring one case


def _in_float64(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A float64 copy of the model and its input (token ids stay integers), or both as they
    are when the model does not run in float64."""
    try:
        copied = copy.deepcopy(model).double()
        inputs = x.double() if x.is_floating_point() else x
        with torch.no_grad():
            if x.is_floating_point():
                copied(inputs)
            else:
                copied(input_ids=inputs, attention_mask=torch.ones_like(inputs))
    except Exception:
        return model, x
    return copied, inputs


def _original_output(model: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        if x.is_floating_point():
            return model(normalise(x, kwargs["input_mean"], kwargs["input_std"]))
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits


def measure(case: Case, size: int = SIZE) -> dict[str, Any]:
    """Build, convert and check one case; the result's ``status`` is ``exact``,
    ``unbuildable`` or the stage that failed (``convert``, ``equivalence``, ``completeness``,
    ``liveness``), with the reason."""
    import bcosify

    started = time.perf_counter()
    result: dict[str, Any] = {"case": case.key}
    try:
        original, x, kwargs = (
            build_timm(case.architecture, size) if case.library == "timm" else build_text(case)
        )
    except NotBuildable as error:
        return {**result, "status": "unbuildable", "reason": str(error)}
    result["parameters"] = sum(p.numel() for p in original.parameters())
    result["input"] = list(x.shape)
    stage = "convert"
    try:
        # in float64 where the model runs in it: a deep random network can amplify float32's
        # rounding beyond the tolerance (HaloNet: the original's own float32 and float64
        # outputs differ by 0.35%), which would hide whether the conversion is exact
        compared, inputs = _in_float64(original, x)
        reference = _original_output(compared, inputs, kwargs)
        same, _ = bcosify.convert(compared, b=1.0, keep_bias=True, **kwargs)
        stage = "equivalence"
        with torch.no_grad():
            error = float((same(inputs) - reference).abs().max())
        scale = float(reference.abs().max())
        result["equivalence"] = error / max(scale, 1e-30)
        if not error <= TOLERANCE * scale:
            raise AssertionError(f"B = 1 with biases differs by {error:.3g} (outputs {scale:.3g})")
        stage = "convert"
        model, _ = bcosify.convert(original, **kwargs)
        stage = "completeness"
        bcosify.calibrate(model, x, method="lsuv")
        residual, signal, spread = explanation(model, x)
        result["residual"] = residual
        if not residual <= TOLERANCE:
            raise AssertionError(f"incomplete: residual {residual:.3g} of the contributions")
        stage = "liveness"
        if not (signal >= LIVE and spread > LIVE):
            raise AssertionError(
                f"no live signal: contributions {signal:.3g} of the score, logits spread "
                f"{spread:.3g}"
            )
        result["status"] = "exact"
    except Exception as error:
        result["status"] = stage
        result["reason"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=-3)
    result["seconds"] = time.perf_counter() - started
    return result


def explanation(model: nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """The explanation's worst relative residual, its smallest signal relative to the score,
    and the logits' spread across the batch."""
    import bcosify
    from bcosify.explain.text import explain_tokens

    with torch.no_grad():
        logits = model(x)
    # the class whose logit the input moves most from the logit bias: with random weights the
    # predicted class may sit at the logit bias, whose explanation is (rightly) near zero
    bias = getattr(getattr(model, "logit_bias", None), "bias", None)
    target = (logits - (0.0 if bias is None else bias.detach())).abs().argmax(1)
    if x.is_floating_point():
        e = bcosify.explain(model, x, target, check="off")
        contributions = e.contributions.flatten(1)
    else:
        e = explain_tokens(model, x, torch.ones_like(x), target, check="off")
        contributions = e.contributions
    signal = contributions.abs().sum(1)
    residual = e.residual.abs() / signal.clamp_min(1e-30)
    live = signal / e.scores.abs().clamp_min(1)
    spread = e.logits.std(0).max()
    worst = float(residual.max()) if torch.isfinite(residual).all() else float("nan")
    return worst, float(live.min()), float(spread)


# ---------------------------------------------------------------------------------------------
# the sweep: every case in its own process, cached


def _cache_path(case: Case, digest: str) -> Path:
    return CACHE / digest / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', case.key)}.json"


def _worker(cases: list[Case], size: int, log: Path) -> subprocess.Popen:
    """A child process that measures ``cases`` in turn, printing ``RESULT`` and each result as
    JSON; its warnings go to ``log`` (a pipe nobody reads could fill and stall it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--size", str(size), "--cases", *(c.key for c in cases)]
    with log.open("a") as errors:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)


def _next_result(worker: subprocess.Popen, deadline: float) -> dict[str, Any] | None:
    """The worker's next result, or None when it ends or ``deadline`` passes first."""
    while (left := deadline - time.monotonic()) > 0:
        if select.select([worker.stdout], [], [], left)[0]:
            line = worker.stdout.readline()
            if not line:
                return None
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
    return None


def run_cases(
    cases: list[Case], size: int, timeout: float, digest: str
) -> Iterator[dict[str, Any]]:
    """Measure ``cases`` in child processes, one at a time, each within ``timeout`` seconds
    (the first of a process with its imports): a case that runs over or crashes its process is
    recorded as such, and a new process goes on with the rest. Each result is cached at once."""
    todo = list(cases)
    log = CACHE / digest / "worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    while todo:
        worker = _worker(todo, size, log)
        started = time.monotonic()
        try:
            while todo and (result := _next_result(worker, started + timeout)) is not None:
                yield _store(todo.pop(0), {**result, "wall": time.monotonic() - started}, digest)
                started = time.monotonic()
        finally:
            worker.kill()
            worker.communicate()
        if todo:
            ran = time.monotonic() - started
            if ran >= timeout:
                result = {"status": "timeout", "reason": f"over {timeout:.0f} s"}
            else:
                tail = (log.read_text().strip().splitlines() or ["no output"])[-1]
                result = {"status": "crash", "reason": f"the process died: {tail}"}
            case = todo.pop(0)
            yield _store(case, {"case": case.key, **result, "wall": ran}, digest)


def _store(case: Case, result: dict[str, Any], digest: str) -> dict[str, Any]:
    _cache_path(case, digest).write_text(json.dumps(result, indent=1))
    return result


def sweep(cases: list[Case], size: int, timeout: float, fresh: bool) -> dict[str, dict[str, Any]]:
    """Every case's result: cached for this code (unless ``fresh``), else measured."""
    digest = source_hash()
    results = {}
    todo = []
    for case in cases:
        path = _cache_path(case, digest)
        if path.exists() and not fresh:
            results[case.key] = json.loads(path.read_text())
        else:
            todo.append(case)
    print(f"{len(results)} cached, {len(todo)} to measure", flush=True)
    for number, result in enumerate(run_cases(todo, size, timeout, digest), 1):
        results[result["case"]] = result
        print(
            f"[{number}/{len(todo)}] {result['case']}: {result['status']} "
            f"{result.get('reason', '')[:160]}",
            flush=True,
        )
    return {case.key: results[case.key] for case in cases}


# ---------------------------------------------------------------------------------------------
# the report

FAILURE_CLASSES = (
    # (pattern of a case's first problem, its class) in order: the first match names the class;
    # {0} is the pattern's first group
    (r"could not trace|could not be traced", "torch.fx cannot trace the code"),
    (r"calls (\w+), which has no dynamic-linear form", "functional {0} without a rule"),
    (r"\(([\w.]+)\): no conversion rule for this module type", "module without a rule ({0})"),
    (r"multiplies input-dependent tensors \((?:matmul|bmm)\)", "attention computed explicitly"),
    (r"multiplies input-dependent tensors", "product of input-dependent tensors (a gate)"),
    (r"adds a constant|concatenates a constant", "constant added to the signal"),
    (r"the input: must go straight", "input not straight into one layer"),
    (r"is not a text classifier bcosify converts", "text classifier refused"),
    (r"an encoder-decoder classifier", "encoder-decoder (tokens enter twice)"),
    (r"the constant .* is combined with a tensor whose first dimension", "batch reshaped"),
    (r"the explained input has shape", "input reshaped (padded) before embedding"),
    (r"token embedding is a (\w+)", "token embedding is a {0}"),
    (r"built like (\w+), but", "built like {0}, computes otherwise"),
    (r"pads asymmetrically inside forward", "TensorFlow 'same' padding (Conv2dSame)"),
    (r"B = 1 with biases differs", "not equivalent at B = 1"),
    (r"^\w+: incomplete", "incomplete explanation"),
    (r"no live signal", "no live signal"),
    (r"^over \d+ s", "timeout"),
    (r"^the process died", "crash"),
)


def first_problem(result: dict[str, Any]) -> str:
    """The first line of a failure that names one problem (a conversion lists many)."""
    reason = result.get("reason", "")
    lines = [line.strip(" -") for line in reason.splitlines() if line.startswith("  - ")]
    return lines[0] if lines else reason.split("\n", 1)[0]


def failure_class(result: dict[str, Any]) -> str:
    """What kind of failure a result is, from its first problem (e.g. ``functional pad
    without a rule``); ``exact`` for a success."""
    if result["status"] == "exact":
        return "exact"
    problem = first_problem(result)
    for pattern, name in FAILURE_CLASSES:
        found = re.search(pattern, problem)
        if found:
            return name.format(*found.groups())
    return f"error at {result['status']}"


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _library_lines(library: str, results: list[dict[str, Any]], target: float) -> list[str]:
    counted = [r for r in results if r["status"] != "unbuildable"]
    exact = [r for r in counted if r["status"] == "exact"]
    share = len(exact) / len(counted) if counted else 0.0
    verdict = "met" if share >= target else "not met"
    classes = Counter(failure_class(r) for r in counted if r["status"] != "exact")
    lines = [
        f"**{library}**: {len(exact)} of {len(counted)} countable "
        f"{'families' if library == 'timm' else 'model types'} convert exactly "
        f"({100 * share:.0f}%; target {100 * target:.0f}%: {verdict}); "
        f"{len(results) - len(counted)} cannot be built small (listed apart).",
        "",
        "Failures by class: "
        + ", ".join(f"{name} {count}" for name, count in classes.most_common())
        + ".",
        "",
        "| family | architecture | result | reason |",
        "|---|---|---|---|",
    ]
    for r in sorted(counted, key=lambda r: (r["status"] != "exact", r["case"])):
        _, family, arch = r["case"].split(":", 2)
        problems = r.get("reason", "").count("\n  - ")
        detail = first_problem(r) if r["status"] != "exact" else ""
        if problems > 1:
            detail = f"{problems} problems, first: {detail}"
        lines.append(f"| {family} | {arch} | {failure_class(r)} | {_short(detail)} |")
    apart = [r for r in results if r["status"] == "unbuildable"]
    if apart:
        lines += ["", f"Not counted ({library}, cannot be built small):", ""]
        lines += [f"- {r['case'].split(':', 1)[1]}: {_short(r['reason'])}" for r in apart]
    return lines


def report(
    results: dict[str, dict[str, Any]],
    apart: dict[str, str],
    size: int,
    timeout: float,
    seconds: float,
    command: str,
) -> str:
    lines = [
        f"Machine: {machine()}; load average {load_average()} at the end. Command: `{command}`.",
        f"Random weights, images {size} x {size} (or the model's own size where it has a fixed "
        "one), 8 token ids for text; each case in its own process, one thread, at most "
        f"{timeout:.0f} s. Exact: B = 1 with biases equals the original (relative "
        f"{TOLERANCE:g}) and the defaults explain completely (residual at most {TOLERANCE:g} "
        f"of the contributions) with a live signal, after rescaling the layers (LSUV). "
        f"The cases took {seconds / 60:.0f} minutes in all (the sum of their processes' wall "
        "times, imports included).",
        "",
    ]
    for library, target in (("timm", TIMM_TARGET), ("transformers", TEXT_TARGET)):
        rows = [r for key, r in results.items() if key.startswith(library + ":")]
        rows += [
            {"case": key + ":", "status": "unbuildable", "reason": why}
            for key, why in apart.items()
            if key.startswith(library + ":")
        ]
        if rows:
            lines += [*_library_lines(library, rows, target), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--timeout", type=float, default=TIMEOUT)
    parser.add_argument("--libraries", nargs="+", default=["timm", "transformers"])
    parser.add_argument("--only", nargs="+", help="families to measure (all by default)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results")
    parser.add_argument("--cases", nargs="+", help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.cases:
        for key in args.cases:
            result = measure(Case(*key.split(":", 2)), args.size)
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    cases: list[Case] = []
    apart: dict[str, str] = {}
    if "timm" in args.libraries:
        found, apart = timm_cases()
        cases += found
    if "transformers" in args.libraries:
        cases += text_cases()
    if args.only:
        cases = [c for c in cases if c.family in args.only]
        apart = {k: v for k, v in apart.items() if k.split(":")[1] in args.only}
    # a terminated sweep unwinds, so that its worker process is killed with it
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    results = sweep(cases, args.size, args.timeout, args.fresh)
    seconds = sum(r.get("wall", 0.0) for r in results.values())
    command = command_line("bench_coverage.py", argv)
    text = report(results, apart, args.size, args.timeout, seconds, command)
    return publish(f"## Coverage of timm and transformers\n\n{text}", SECTION, args.write)


if __name__ == "__main__":
    raise SystemExit(main())
