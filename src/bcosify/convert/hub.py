"""The Hugging Face Hub: ``from_pretrained``, ``push_to_hub`` and a model card for B-cos models.

:class:`HubMixin` gives :class:`~bcosify.convert.BcosModel` and :class:`~bcosify.convert.BcosCLIP`

- ``from_pretrained(repo_or_folder)``: a local folder written by ``save_pretrained``, or a Hub
  repository, of which only ``config.json``, ``model.safetensors`` and ``README.md`` are
  downloaded (no pickles, no code); the model is rebuilt from the config as ``bcosify.load``
  does;
- ``push_to_hub(repo_id)``: the files ``save_pretrained`` writes, plus the model card
  ``README.md`` (:meth:`HubMixin.model_card`), uploaded in one commit with ``huggingface_hub``'s
  ``HfApi.upload_folder``;
- ``model_card(...)``: the card, with the source model, the conversion report, the recipe and
  the measured metrics when they are given, and how to explain the model.

``huggingface_hub`` is imported only by these methods (``pip install 'bcosify[hub]'``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CheckpointError
from ..serialization import CONFIG_FILE, WEIGHTS_FILE, read_config_json

__all__ = ["MODEL_CARD_FILE", "HubMixin", "load_folder", "register_loader"]

MODEL_CARD_FILE = "README.md"
_DOWNLOADED = [CONFIG_FILE, WEIGHTS_FILE, MODEL_CARD_FILE]
_T = TypeVar("_T", bound="HubMixin")


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            "the Hugging Face Hub needs huggingface_hub: pip install 'bcosify[hub]'"
        ) from None
    return huggingface_hub


class HubMixin:
    """``from_pretrained`` / ``push_to_hub`` / ``model_card`` on top of ``save_pretrained``.

    A class using it provides ``save_pretrained(directory)`` and ``_card_facts()`` (what the
    card says about the model); the loader of each saved format is registered with
    :func:`register_loader`.
    """

    _pipeline_tag = "image-classification"

    @classmethod
    def from_pretrained(
        cls: type[_T],
        repo_or_folder: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **load_kwargs: Any,
    ) -> _T:
        """The model saved in a local folder or in a Hugging Face Hub repository.

        A folder (an existing path) is read directly and nothing is downloaded; anything else
        is a Hub repository id (``"user/resnet50-bcos"``), of which ``config.json``,
        ``model.safetensors`` and ``README.md`` are downloaded (to the Hub cache, with
        ``revision``, ``cache_dir``, ``token`` and ``local_files_only`` as in
        ``huggingface_hub.snapshot_download``). ``load_kwargs`` go to ``bcosify.load`` /
        ``bcosify.load_clip`` (``model=`` for a model converted from your own architecture).

        Example:
            >>> import tempfile, torch, bcosify
            >>> model, _ = bcosify.convert(
            ...     bcosify.models.create("torchvision:resnet18", num_classes=3))
            >>> folder = model.save_pretrained(tempfile.mkdtemp())
            >>> loaded = bcosify.BcosModel.from_pretrained(folder)
            >>> x = torch.rand(1, 3, 32, 32)
            >>> torch.equal(loaded(x), model(x))
            True
        """
        folder = Path(repo_or_folder)
        if not folder.is_dir():
            folder = _download(str(repo_or_folder), revision, cache_dir, token, local_files_only)
        model = load_folder(folder, **load_kwargs)
        if not isinstance(model, cls):
            raise CheckpointError(
                f"{str(repo_or_folder)!r} holds a {type(model).__name__}, not a {cls.__name__}: "
                f"load it with {type(model).__name__}.from_pretrained"
            )
        return model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload B-cos model with bcosify",
        revision: str | None = None,
        create_pr: bool = False,
        report: Any = None,
        recipe: Any = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Any:
        """Upload the model to the Hub repository ``repo_id`` (created if needed).

        The commit holds the files :meth:`save_pretrained` writes and the model card
        ``README.md`` (:meth:`model_card` with ``report``, ``recipe`` and ``metrics``).
        Returns ``huggingface_hub``'s commit information.
        """
        hub = _hub()
        api = hub.HfApi(token=token)
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")  # type: ignore[attr-defined]
            card = self.model_card(report=report, recipe=recipe, metrics=metrics, repo_id=repo_id)
            (folder / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
            return api.upload_folder(
                repo_id=repo_id,
                repo_type="model",
                folder_path=folder,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )

    def model_card(
        self,
        *,
        report: Any = None,
        recipe: Any = None,
        metrics: Mapping[str, Any] | None = None,
        repo_id: str | None = None,
    ) -> str:
        """The model card (``README.md``): Hub metadata, then what the model is and how to use it.

        Args:
            report: the conversion report (:class:`~bcosify.convert.ConversionReport`).
            recipe: the fine-tuning recipe (a :class:`~bcosify.train.Recipe` or a mapping).
            metrics: measured numbers, e.g. the JSON ``bcosify evaluate`` writes (nested
                mappings are flattened to dotted names).
            repo_id: the repository, for the loading example.

        Example:
            >>> import bcosify
            >>> model, report = bcosify.convert(
            ...     bcosify.models.create("torchvision:resnet18", num_classes=3))
            >>> card = model.model_card(report=report, metrics={"accuracy": {"top1": 0.5}})
            >>> "library_name: bcosify" in card, "| accuracy.top1 | 0.5 |" in card
            (True, True)
        """
        facts = self._card_facts()
        name = repo_id or "path/to/this-model"
        lines = [
            "---",
            "library_name: bcosify",
            f"pipeline_tag: {self._pipeline_tag}",
            "tags:",
            *(f"- {tag}" for tag in ("b-cos", "explainability", "interpretability", "bcosify")),
            "---",
            "",
            f"# {facts['title']}",
            "",
            "A B-cos model made with [bcosify](https://pypi.org/project/bcosify/): it computes "
            "`y = W(x) x` (plus named constants), and its explanations, the contributions "
            "`x * W(x)`, sum exactly to the explained output.",
            "",
            "## Model",
            "",
            *(f"- **{key}**: {value}" for key, value in facts["details"].items()),
            "",
        ]
        if report is not None:
            lines += ["## Conversion report", "", "```text", str(report), "```", ""]
        if recipe is not None:
            lines += ["## Training recipe", "", "```json", _json(recipe), "```", ""]
        if metrics:
            lines += ["## Measured metrics", "", "| metric | value |", "|---|---|"]
            lines += [f"| {key} | {value} |" for key, value in _flatten(metrics)]
            lines.append("")
        lines += [
            "## How to explain",
            "",
            "```python",
            "import bcosify",
            f"model = bcosify.{type(self).__name__}.from_pretrained({name!r})",
            "# images: RGB in [0, 1], shape (N, 3, H, W)",
            *facts["explain"],
            "e.contributions      # the explanation, shaped like the encoded input",
            "e.residual           # output - contributions - constants: ~1e-7",
            "```",
            "",
        ]
        return "\n".join(lines)

    def _card_facts(self) -> dict[str, Any]:
        raise NotImplementedError


_LOADERS: dict[str, Callable[..., Any]] = {}


def register_loader(format: str, loader: Callable[..., Any]) -> None:
    """``loader(folder, **kwargs)`` loads the folders whose ``config.json`` has ``format``.

    Example:
        >>> sorted(_LOADERS)  # the formats bcosify.convert registers
        ['bcosify-clip/1', 'bcosify-model/1', 'bcosify-text-model/1']
    """
    _LOADERS[format] = loader


def load_folder(folder: str | Path, **kwargs: Any) -> Any:
    """The B-cos model saved in ``folder``, by the loader of its config's format.

    Raises:
        CheckpointError: for a folder of no format bcosify loads.
    """
    format = read_config_json(folder).get("format")
    loader = _LOADERS.get(format) if isinstance(format, str) else None
    if loader is None:
        raise CheckpointError(
            f"{str(folder)!r} holds no B-cos model bcosify loads (format {format!r}; known: "
            f"{', '.join(sorted(_LOADERS))})"
        )
    return loader(folder, **kwargs)


def _download(
    repo_id: str,
    revision: str | None,
    cache_dir: str | Path | None,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
    """The folder of the repository's config, safetensors weights and card in the Hub cache."""
    hub = _hub()
    try:
        path = hub.snapshot_download(
            repo_id=repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=_DOWNLOADED,
        )
    # HTTP errors, offline mode and missing cache entries are OSErrors; bad ids ValueErrors
    except (OSError, ValueError, hub.errors.EntryNotFoundError) as error:
        raise CheckpointError(
            f"{repo_id!r} is neither a local folder nor a Hugging Face Hub repository that "
            f"could be downloaded: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"the Hub repository {repo_id!r} has no bcosify {CONFIG_FILE} and {WEIGHTS_FILE}: "
            "it was not written by push_to_hub of a bcosify model"
        )
    return folder


def _json(value: Any) -> str:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.dumps(value, indent=2, default=str)


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Numbers and strings of nested mappings as ``(dotted name, value)``, in order."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{name}.")
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        elif isinstance(value, (int, str)) or value is None:
            rows.append((name, str(value)))
    return rows
