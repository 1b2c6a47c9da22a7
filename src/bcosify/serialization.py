"""Saved models on disk: safetensors weights and a JSON config, each written atomically.

Nothing here unpickles or executes anything a file says: weights are safetensors, configs are
JSON. Reading a saved model (:func:`load_pretrained`) checks, before any weight is allocated,
that the weights file's header fits the model the config describes (built on the ``meta``
device, where nothing is allocated), that the weights are the ones the config was saved with
(a SHA-256 recorded in the config), and that every weight is finite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from .errors import BcosifyError, CheckpointError, StorageError, UsageError
from .schema import Field, FieldError, Record, Text

__all__ = [
    "CONFIG_FILE",
    "HASH_FIELD",
    "MAX_CONFIG_BYTES",
    "WEIGHTS_FILE",
    "atomic_write",
    "load_pretrained",
    "load_state_dict_strictly",
    "non_finite_entries",
    "read_checked_config",
    "read_config_json",
    "read_json",
    "read_weights",
    "remove_stale_temporaries",
    "temporary_name",
    "write_pretrained",
    "write_text",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HASH_FIELD = "weights_sha256"
"""The config field holding the SHA-256 of :data:`WEIGHTS_FILE`, written by
:func:`write_pretrained` and checked by :func:`load_pretrained`."""
MAX_CONFIG_BYTES = 32 * 2**20
"""The largest JSON file bcosify reads (a config with 100,000 class names is about 3 MB)."""
TEMPORARY_SUFFIX = ".tmp"
_Module = TypeVar("_Module", bound=nn.Module)


def temporary_name(target: Path) -> Path:
    """A fresh temporary file name beside ``target``: ``.<name>.<random>.tmp``.

    Every temporary file bcosify writes follows this pattern, so that
    :func:`remove_stale_temporaries` can find what a killed process left behind.

    Example:
        >>> temporary_name(Path("run/checkpoint.safetensors")).name.startswith(
        ...     ".checkpoint.safetensors.")
        True
    """
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temporary)`` for a temporary file beside ``target``, then rename it.

    A process killed mid-write leaves ``target`` as it was (or absent), never half-written; the
    temporary file (see :func:`temporary_name`) is removed on any error. The file gets the
    usual permissions (``0o666`` less the umask), like any file the process creates. A write
    that fails for lack of space or permission raises a :class:`StorageError` in one line.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, lambda path: path.write_text("done"))
        >>> target.read_text(), len(list(target.parent.iterdir()))
        ('done', 1)
    """
    temporary = temporary_name(target)
    try:
        # created here with the umask applied (O_EXCL: never another process's file), and that
        # mode kept: writers that replace the file (safetensors does) would leave it 0o600
        os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        mode = temporary.stat().st_mode & 0o777
        write(temporary)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        failure = None if isinstance(error, StorageError) else _write_failure(error)
        if failure is not None:
            number, reason = failure
            kept = "the previous version is intact" if target.exists() else "nothing was written"
            raise StorageError(
                number,
                f"could not write {str(target)!r}: {reason} ({kept}); free space or "
                "fix the permissions and run the same command again",
            ) from error
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`: a new file renamed into
    place, so a link planted at ``path`` is replaced rather than written through, and a kill
    leaves the previous file whole.

    Example:
        >>> import tempfile
        >>> write_text(Path(tempfile.mkdtemp()) / "r.json", "{}").read_text()
        '{}'
    """
    path = Path(path)
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return path


# safetensors reports a failed write as "Error while serializing: I/O error: <reason> (os error
# <errno>)" in its own exception type, which is no OSError
_SAFETENSORS_IO = re.compile(r"I/O error: (?P<reason>.*?)(?: \(os error (?P<errno>\d+)\))?$")


def _write_failure(error: BaseException) -> tuple[int | None, str] | None:
    """The errno and reason of a write that failed for the file system (an ``OSError``, or a
    safetensors error that wraps one), else None: any other error is not a storage problem."""
    from safetensors import SafetensorError

    if isinstance(error, OSError):
        return error.errno, error.strerror or str(error)
    if isinstance(error, SafetensorError):
        found = _SAFETENSORS_IO.search(str(error))
        if found:
            number = int(found["errno"]) if found["errno"] else None
            return number, os.strerror(number) if number else found["reason"]
    return None


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``directory``; returns
    them. Those are bcosify's own (:func:`temporary_name`) and safetensors' (``.tmpXXXXXX``:
    it writes through a temporary file of its own too). Call it only while no other process
    writes there.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = temporary_name(folder / "model.safetensors").write_bytes(b"half")
        >>> _ = (folder / ".tmpAb12Cd").write_bytes(b"half")
        >>> removed = remove_stale_temporaries(folder)
        >>> len(removed), list(folder.iterdir())
        (2, [])
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted({*directory.glob(f".*{TEMPORARY_SUFFIX}"), *directory.glob(".tmp*")})
    for path in stale:
        if path.is_file():
            path.unlink(missing_ok=True)
    return stale


def write_pretrained(directory: str | Path, module: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``module``'s state dict as :data:`WEIGHTS_FILE` and ``config`` as
    :data:`CONFIG_FILE` in ``directory`` (created if needed); returns the directory.

    Each file is written under a temporary name and renamed. The weights go first and the
    config records their SHA-256 (:data:`HASH_FIELD`), so a save over an existing model that is
    killed between the two files leaves new weights beside the old config, which
    :func:`load_pretrained` refuses rather than loading a mix.

    Example:
        >>> import tempfile, torch
        >>> out = write_pretrained(tempfile.mkdtemp(), torch.nn.Linear(2, 2), {"format": "x"})
        >>> sorted(p.name for p in out.iterdir()), sorted(read_config_json(out))
        (['config.json', 'model.safetensors'], ['format', 'weights_sha256'])
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    digest: list[str] = []

    def write_weights(path: Path) -> None:
        save_file(state, str(path))
        digest.append(_sha256(path))

    atomic_write(directory / WEIGHTS_FILE, write_weights)
    write_text(
        directory / CONFIG_FILE, json.dumps({**config, HASH_FIELD: digest[0]}, indent=2) + "\n"
    )
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(2**22):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | Path, what: str = "config") -> Any:
    """The JSON value in the file ``path``, read as data only, with one clear
    :class:`CheckpointError` for every way a file can be wrong: not a regular file (a FIFO,
    a folder), larger than :data:`MAX_CONFIG_BYTES`, not UTF-8, not JSON, ``NaN`` or
    ``Infinity`` (not JSON either, though Python's parser takes them), or nested too deeply.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "c.json"
        >>> _ = path.write_text('{"b": NaN}')
        >>> read_json(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bcosify.errors.CheckpointError: '...c.json' is not a valid config: NaN is not JSON ...
    """
    path = Path(path)
    if not path.is_file():
        what_it_is = "does not exist" if not path.exists() else "is not a regular file"
        raise CheckpointError(f"{str(path)!r} {what_it_is}: expected a JSON {what} file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{str(path)!r} is {size / 2**20:.0f} MiB, more than a {what} file can be "
            f"({MAX_CONFIG_BYTES / 2**20:.0f} MiB)"
        )

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON (numbers must be finite)")

    try:
        with path.open("rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
        return json.loads(text, parse_constant=refuse)
    except OSError as error:
        raise CheckpointError(f"could not read {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"{str(path)!r} is not a valid {what}: not UTF-8 text (byte {error.start})"
        ) from None
    except RecursionError:
        raise CheckpointError(f"{str(path)!r} is not a valid {what}: nested too deeply") from None
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{str(path)!r} is not a valid {what}: {error}") from None


def read_config_json(directory: str | Path) -> dict[str, Any]:
    """The :data:`CONFIG_FILE` of a saved model (an object), with clear errors when missing or
    broken (see :func:`read_json`)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{str(directory)!r} is not a saved bcosify model: {CONFIG_FILE} is missing "
            "(save one with model.save_pretrained(directory))"
        )
    config = read_json(path, "bcosify config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} is not a bcosify config: it holds no JSON object")
    return config


_VERSION = Text(pattern=r"[0-9A-Za-z.+\-]{1,40}")
_SHA256 = Text(pattern=r"[0-9a-f]{64}")


def read_checked_config(
    directory: str | Path,
    format: str,
    fields: dict[str, Field],
    required: Sequence[str] = (),
    rule: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The :data:`CONFIG_FILE` of a saved model of ``format``, every field checked against
    ``fields`` (plus the ``format``, ``bcosify_version`` and :data:`HASH_FIELD` every saved
    config has); an unknown field or a value out of its range is a :class:`CheckpointError`
    naming it.

    Example:
        >>> import tempfile
        >>> from bcosify.schema import Integer
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / CONFIG_FILE).write_text('{"format": "f/1", "n": 40000000}')
        >>> read_checked_config(folder, "f/1", {"n": Integer(1, 10)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bcosify.errors.CheckpointError: '...config.json' is not a valid f/1 config: n: 40000000 ...
    """
    data = read_config_json(directory)
    path = Path(directory) / CONFIG_FILE
    if data.get("format") != format:
        raise CheckpointError(
            f"{str(path)!r} is not a {format} config (its format is {data.get('format')!r})"
        )
    schema = Record(
        {
            "format": Text(choices=(format,)),
            "bcosify_version": _VERSION,
            HASH_FIELD: _SHA256,
            **fields,
        },
        required=("format", *required),
        rule=rule,
    )
    try:
        return schema.check(data)
    except FieldError as error:
        raise CheckpointError(f"{str(path)!r} is not a valid {format} config: {error}") from None


def _weights_path(directory: str | Path) -> Path:
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: the saved model is incomplete")
    return path


def read_weights(directory: str | Path) -> dict[str, Tensor]:
    """The :data:`WEIGHTS_FILE` of a saved model, read without pickles; a weight holding NaN
    or infinity is a :class:`CheckpointError`."""
    from safetensors.torch import load_file

    path = _weights_path(directory)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise CheckpointError(f"could not read {str(path)!r}: {error}") from None
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds non-finite weights ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}): the model it was saved from had diverged; "
            "save a model with finite weights"
        )
    return state


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a safetensors file, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"could not read {str(path)!r}: {error}") from None


def _on_meta(build: Callable[[], _Module]) -> _Module | None:
    """The model ``build`` makes, built on the ``meta`` device (no memory); None where the
    architecture cannot be built there (it computes with tensor values while building)."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:
        return None


def load_pretrained(
    directory: str | Path,
    build: Callable[[], _Module],
    config: dict[str, Any] | None = None,
    check: Callable[[_Module], None] | None = None,
    precheck: bool = True,
) -> _Module:
    """The model ``build`` makes, with the weights saved in ``directory`` loaded strictly.

    Before anything is allocated, the weights file's header is compared with the model built
    on the ``meta`` device: a config that asks for more (40 million classes beside a small
    file) fails at once, naming the mismatched weights; ``check`` (if given) then checks that
    meta model further. The weights must then hash to the config's :data:`HASH_FIELD` (when it
    records one) and be finite. ``precheck=False`` skips the meta build, where ``build``
    converts a model the caller passed (whose size the caller knows).

    Example:
        >>> import tempfile, torch
        >>> folder = write_pretrained(tempfile.mkdtemp(), torch.nn.Linear(2, 3), {})
        >>> load_pretrained(folder, lambda: torch.nn.Linear(2, 4))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        bcosify.errors.CheckpointError: the weights in '...' do not fit the model:...
    """
    path = _weights_path(directory)
    what = f"the weights in {str(directory)!r}"
    meta = _on_meta(build) if precheck else None
    if meta is not None:
        expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        _check_state_names_and_shapes(
            expected, _header_shapes(path), f"{what} do not fit the model", CheckpointError
        )
        if check is not None:
            check(meta)
    recorded = (config or {}).get(HASH_FIELD)
    if recorded is not None and recorded != _sha256(path):
        raise CheckpointError(
            f"{str(path)!r} is not the weights file that {CONFIG_FILE} was saved with (its "
            f"SHA-256 differs): a save was interrupted between the two files, or one was "
            "replaced; save the model again"
        )
    model = _built(build, directory)
    load_state_dict_strictly(model, read_weights(directory), what, CheckpointError)
    return model


def _built(build: Callable[[], _Module], directory: str | Path) -> _Module:
    """``build()``, where a value a library cannot build with (zero attention heads, a width
    its layers do not divide) is a :class:`CheckpointError` naming it, not a traceback."""
    try:
        return build()
    except CheckpointError:
        raise
    except Exception as error:  # the library's own check of a value our schema let through
        if isinstance(error, BcosifyError) and not isinstance(error, UsageError):
            raise
        raise CheckpointError(
            f"{str(Path(directory) / CONFIG_FILE)!r} describes a model that cannot be built: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """The names of the floating-point tensors in a nested ``state`` that hold NaN or infinity.

    Example:
        >>> non_finite_entries({"model": {"w": torch.ones(2), "b": torch.tensor([float("nan")])}})
        ['model.b']
    """
    if isinstance(state, Tensor):
        finite = not state.is_floating_point() or bool(torch.isfinite(state).all())
        return [] if finite else [prefix]
    items: Sequence[tuple[Any, Any]] = ()
    if isinstance(state, dict):
        items = list(state.items())
    elif isinstance(state, (list, tuple)):
        items = list(enumerate(state))
    found = []
    for key, value in items:
        found += non_finite_entries(value, f"{prefix}.{key}" if prefix else str(key))
    return found


def _check_state_names_and_shapes(
    own: dict[str, tuple[int, ...]],
    given: dict[str, tuple[int, ...]],
    what: str,
    error: type[Exception],
) -> None:
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [
        f"{k}: {given[k]} vs {own[k]} in the model"
        for k in sorted(set(own) & set(given))
        if given[k] != own[k]
    ]
    if missing or unexpected or shapes:
        parts = [f"{what}:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                )
                parts.append(f"{title}: {shown}")
        parts.append("Check that the weights were saved from the same architecture and options.")
        raise error("\n  ".join(parts))


def load_state_dict_strictly(
    model: nn.Module, state: dict[str, Tensor], what: str, error: type[Exception]
) -> None:
    """``model.load_state_dict(state)`` with an error that names every mismatched key.

    Example:
        >>> load_state_dict_strictly(
        ...     torch.nn.Linear(2, 2), {"weight": torch.ones(2, 2)}, "w", ValueError)
        Traceback (most recent call last):
        ...
        ValueError: w do not fit Linear:
          missing keys: bias
          Check that the weights were saved from the same architecture and options.
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    _check_state_names_and_shapes(own, given, f"{what} do not fit {type(model).__name__}", error)
    model.load_state_dict(state)
