"""Text data: a built-in synthetic task with ground-truth evidence tokens, a word-level
tokenizer, and labelled text files (JSON lines or CSV with ``text`` and ``label``).

The synthetic task (:class:`SyntheticTexts`): each text is about one of a few topics, decided by
one or two keywords of that topic planted among filler words; keywords of the other topics are
planted too, but negated ("not cat"), and sometimes a negated keyword of the text's own topic.
A bag of words cannot solve it: a keyword counts only when the word before it is not a
negation. The un-negated keywords of the label's topic are the ground-truth evidence, which
the token pointing game checks explanations against. Every example is generated from
``(seed, split, index)``: nothing is stored or downloaded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from ..schema import MAX_CLASSES

__all__ = [
    "SPECIAL_TOKENS",
    "TOPICS",
    "SyntheticTexts",
    "TextExample",
    "TextFileDataset",
    "encode_padded",
    "word_tokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
"""The word tokenizer's special tokens, ids 0 to 3: padding 0, each text ``[CLS] ... [SEP]``."""

# topic -> its keywords; sorted by topic name (the class indices)
TOPICS: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "horse", "bird", "fish", "lion", "mouse", "wolf"),
    "food": ("bread", "apple", "cheese", "soup", "rice", "cake", "pasta", "salad"),
    "sports": ("tennis", "soccer", "golf", "hockey", "rugby", "boxing", "skiing", "rowing"),
    "weather": ("rain", "snow", "storm", "wind", "fog", "sunshine", "thunder", "frost"),
}
_NEGATIONS = ("not", "never", "no")
_FILLER = [
    *("the", "a", "and", "of", "it", "was", "is", "on", "in", "with", "about", "today", "we"),
    *("they", "saw", "there", "some", "very", "this", "that", "here", "many", "then", "after"),
    *("before", "again", "really", "just", "maybe", "also", "still", "quite", "our", "their"),
    *("one", "two", "new", "old", "big", "small"),
]
SPLITS = {"train": 0, "val": 1, "test": 2}


def word_tokenizer(words: Iterable[str]) -> Any:
    """A word-level tokenizer (a transformers ``PreTrainedTokenizerFast`` built with
    ``tokenizers``) over ``words``: lower case, split on whitespace and punctuation, unknown
    words ``[UNK]``, each text ``[CLS] ... [SEP]``, padding ``[PAD]`` (id 0).

    Example:
        >>> tokenizer = word_tokenizer(["good", "film"])
        >>> tokenizer("A good film!")["input_ids"]
        [2, 1, 4, 5, 1, 3]
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def encode_padded(tokenizer: Any, text: str, max_length: int) -> Tensor:
    """The token ids of ``text`` padded (or truncated) to ``max_length``: one fixed-size tensor,
    as the training loop batches them (the model derives the attention mask from the padding).

    Example:
        >>> encode_padded(word_tokenizer(["good"]), "good", 5).tolist()
        [2, 4, 3, 0, 0]
    """
    encoded = tokenizer(text, padding="max_length", truncation=True, max_length=max_length)
    return torch.tensor(encoded["input_ids"], dtype=torch.long)


@dataclass(frozen=True)
class TextExample:
    """One synthetic text: its words, its label and which words are the evidence for it."""

    text: str
    label: int
    words: tuple[str, ...]
    evidence: tuple[bool, ...]


class SyntheticTexts(Dataset):
    """The synthetic topic task (see the module docstring), as ``(token ids, label)``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (different examples for the same seed).
        num_examples: the size of the split.
        seed: with the split and the index, decides every example.
        num_classes: how many topics (2 to 4), the first in name order.
        min_words, max_words: the length of a text, in words.

    Attributes:
        classes: the topic names; ``tokenizer``: the word tokenizer over the vocabulary;
        max_length: the padded length of the token ids (``max_words + 2``).

    Example:
        >>> data = SyntheticTexts("train", 4, seed=0)
        >>> ids, label = data[0]
        >>> ids.shape, data.classes
        (torch.Size([22]), ['animals', 'food', 'sports', 'weather'])
        >>> ex = data.example(0)
        >>> [w for w, e in zip(ex.words, ex.evidence) if e][0] in TOPICS[data.classes[ex.label]]
        True
    """

    def __init__(
        self,
        split: str = "train",
        num_examples: int = 2000,
        *,
        seed: int = 0,
        num_classes: int = 4,
        min_words: int = 8,
        max_words: int = 20,
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if not 2 <= num_classes <= len(TOPICS):
            raise DataError(f"num_classes must be 2 to {len(TOPICS)}, got {num_classes}")
        if not 8 <= min_words <= max_words:
            raise DataError(
                f"a text needs 8 <= min_words <= max_words words, got {min_words}, {max_words}"
            )
        if num_examples < 1:
            raise DataError(f"num_examples must be positive, got {num_examples}")
        self.split, self.num_examples, self.seed = split, num_examples, seed
        self.min_words, self.max_words = min_words, max_words
        self.classes = sorted(TOPICS)[:num_classes]
        self.max_length = max_words + 2
        self.tokenizer = word_tokenizer(vocabulary())

    def __len__(self) -> int:
        return self.num_examples

    def example(self, index: int) -> TextExample:
        """The ``index``-th text, its label and its evidence words."""
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        label = int(rng.integers(len(self.classes)))
        own = TOPICS[self.classes[label]]
        others = [w for c in self.classes if c != self.classes[label] for w in TOPICS[c]]
        # phrases: (words, evidence flags); keywords of the label's topic un-negated
        phrases: list[tuple[list[str], list[bool]]] = [
            ([str(w)], [True]) for w in rng.choice(own, int(rng.integers(1, 3)), replace=False)
        ]
        negated = list(rng.choice(others, int(rng.integers(1, 4)), replace=False))
        if rng.random() < 0.3:
            negated.append(str(rng.choice(own)))
        phrases += [([str(rng.choice(_NEGATIONS)), str(w)], [False, False]) for w in negated]
        length = int(rng.integers(self.min_words, self.max_words + 1))
        planted = sum(len(words) for words, _ in phrases)
        fillers = [([str(w)], [False]) for w in rng.choice(_FILLER, max(length - planted, 0))]
        pieces = phrases + fillers
        order = rng.permutation(len(pieces))
        words, evidence = [], []
        for i in order:
            words += pieces[i][0]
            evidence += pieces[i][1]
        return TextExample(" ".join(words), label, tuple(words), tuple(evidence))

    def evidence_mask(self, index: int) -> Tensor:
        """Which of the ``index``-th example's tokens (padded to ``max_length``) are evidence."""
        example = self.example(index)
        encoded = self.tokenizer(
            example.text, padding="max_length", truncation=True, max_length=self.max_length
        )
        words = encoded.word_ids()
        return torch.tensor([w is not None and example.evidence[w] for w in words])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        example = self.example(index)
        return encode_padded(self.tokenizer, example.text, self.max_length), example.label


def vocabulary() -> list[str]:
    """Every word of the synthetic task: keywords, negations and filler words.

    Example:
        >>> len(vocabulary())
        75
    """
    words = [w for topic in sorted(TOPICS) for w in TOPICS[topic]]
    return words + list(_NEGATIONS) + _FILLER


class TextFileDataset(Dataset):
    """Labelled texts from a JSON-lines file (objects with ``text`` and ``label``) or a CSV file
    (a header with ``text`` and ``label`` columns), as ``(token ids, label)``.

    Labels may be class names (sorted into :attr:`classes`) or integers ``0..C-1``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
        >>> _ = path.write_text('{"text": "good film", "label": "pos"}\\n'
        ...                     '{"text": "bad film", "label": "neg"}\\n')
        >>> data = TextFileDataset(path, word_tokenizer(["good", "bad", "film"]), max_length=6)
        >>> data.classes, data[0][0].tolist(), data[0][1]
        (['neg', 'pos'], [2, 4, 6, 3, 0, 0], 1)
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Any,
        *,
        max_length: int = 128,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.max_length = max_length
        texts, labels = _read_labelled_texts(self.path)
        if all(isinstance(label, int) for label in labels) and classes is None:
            low, high = min(labels), max(labels)
            if low < 0 or high >= MAX_CLASSES:
                raise DataError(
                    f"{self.path}: integer labels are class indices 0 to C - 1 (at most "
                    f"{MAX_CLASSES} classes), got {low if low < 0 else high}; use class names "
                    "for other labels"
                )
            names = [str(i) for i in range(high + 1)]
        else:
            names = list(classes) if classes is not None else sorted({str(x) for x in labels})
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(x) for x in labels} - set(index))
        if unknown:
            raise DataError(
                f"{self.path}: labels {unknown[:5]} are not among the classes {names[:10]}"
            )
        self.classes = names
        self.texts = texts
        self.labels = [index[str(x)] for x in labels]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return encode_padded(self.tokenizer, self.texts[index], self.max_length), self.labels[index]


def _read_labelled_texts(path: Path) -> tuple[list[str], list[Any]]:
    """``(texts, labels)`` of a ``.jsonl`` or ``.csv`` file, every line checked."""
    if not path.is_file():
        raise DataError(f"{path} is not a file: pass a .jsonl or .csv file with text and label")
    try:
        rows = _rows(path)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except csv.Error as error:
        raise DataError(f"{path}: not a valid CSV file ({error})") from None
    except RecursionError:
        raise DataError(f"{path}: a JSON line is nested too deeply") from None
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        if "text" not in row or "label" not in row:
            raise DataError(f"{path}: row {number} lacks 'text' or 'label' (has {sorted(row)})")
        label = row["label"]
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise DataError(f"{path}: row {number}: a label is a class name or an integer")
        if not isinstance(row["text"], str):
            raise DataError(f"{path}: row {number}: the text must be a string, got {row['text']!r}")
        texts.append(row["text"])
        labels.append(label)
    if len(set(map(str, labels))) < 2:
        raise DataError(f"{path}: a classifier needs at least two classes of labels")
    return texts, labels


_MAX_CSV_FIELD = 2**24  # characters: csv's default of 131072 refuses long documents


def _rows(path: Path) -> list[dict[str, Any]]:
    """The objects of a ``.jsonl`` file or the rows of a ``.csv`` file."""
    rows: list[dict[str, Any]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected an object with text and label")
            rows.append(row)
    elif path.suffix == ".csv":
        csv.field_size_limit(max(csv.field_size_limit(), _MAX_CSV_FIELD))
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise DataError(f"{path}: a text file must end in .jsonl or .csv, not {path.suffix!r}")
    return rows
