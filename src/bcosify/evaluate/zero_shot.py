"""Zero-shot classification with CLIP: class embeddings from prompts, teacher against student.

A class is represented by the text embedding of prompts naming it (one per template, averaged
after L2 normalisation, then normalised again, as in CLIP); an image is assigned the class whose
embedding is most similar to its image embedding. The text embeddings come from the original
text tower, for the original image tower (the teacher) and the B-cos one (the student) alike
(RECIPE 7 and 8).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..device import device_of
from ..errors import EvaluationError
from ..explain.core import _evaluation

__all__ = [
    "DEFAULT_TEMPLATES",
    "ZeroShotResult",
    "class_embeddings",
    "zero_shot_accuracy",
    "zero_shot_evaluation",
]

# A small set in the style of CLIP's ImageNet prompts; pass templates= for another domain.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
)


def class_embeddings(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> Tensor:
    """One unit-norm embedding per class ``(C, D)``: the normalised mean of its prompts'.

    Args:
        encode_text: prompts -> text embeddings ``(N, D)`` (e.g. ``BcosCLIP.encode_text``).
        class_names: the name of every class, in label order.
        templates: prompt templates, each with one ``{}`` for the class name.

    Example:
        >>> encode = lambda prompts: torch.tensor([[len(p), 1.0] for p in prompts])
        >>> class_embeddings(encode, ["cat", "horse"], ["a {}"]).shape
        torch.Size([2, 2])
    """
    if not class_names:
        raise EvaluationError("zero-shot classification needs the class names")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise EvaluationError(
            f"every template needs exactly one '{{}}' for the class name; got {list(templates)}"
        )
    rows = []
    with torch.no_grad():
        for name in class_names:
            prompts = [template.format(name) for template in templates]
            rows.append(F.normalize(encode_text(prompts).float(), dim=-1).mean(0))
    return F.normalize(torch.stack(rows), dim=-1)


def zero_shot_accuracy(
    image_encoder: nn.Module, classes: Tensor, dataset: Dataset, *, batch_size: int = 64
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of assigning each image the most similar class embedding.

    Args:
        image_encoder: images in ``[0, 1]`` -> image embeddings ``(N, D)`` (a ``BcosCLIP``, or
            its ``original`` for the teacher).
        classes: class embeddings ``(C, D)`` (see :func:`class_embeddings`).
        dataset: items ``(image, label, ...)``.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.eye(3), torch.arange(3))
        >>> zero_shot_accuracy(torch.nn.Identity(), torch.eye(3), data)
        {'top1': 1.0, 'top5': 1.0}
    """
    device = device_of(image_encoder)
    top1 = top5 = count = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with _evaluation(image_encoder), torch.no_grad():
        for batch in loader:
            images, labels = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
            embeddings = image_encoder(images).float()
            if embeddings.ndim != 2 or embeddings.shape[1] != classes.shape[1]:
                raise EvaluationError(
                    f"the image embeddings {tuple(embeddings.shape)} do not fit the class "
                    f"embeddings {tuple(classes.shape)}"
                )
            similarity = F.normalize(embeddings, dim=-1) @ classes.to(device).T
            best = similarity.topk(min(5, len(classes)), dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            top5 += int((best == labels[:, None]).any(1).sum())
            count += len(labels)
    if count == 0:
        raise EvaluationError("zero-shot accuracy needs a non-empty dataset")
    return {"top1": top1 / count, "top5": top5 / count}


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot accuracy of the teacher (original tower) and the student (B-cos tower).

    ``str(result)`` is a small table.
    """

    teacher: dict[str, float]
    student: dict[str, float]
    templates: tuple[str, ...]
    num_examples: int

    def __str__(self) -> str:
        lines = ["| image tower | top-1 | top-5 |", "|---|---:|---:|"]
        for name, scores in (("original (teacher)", self.teacher), ("B-cos", self.student)):
            lines.append(f"| {name} | {scores['top1']:.2%} | {scores['top5']:.2%} |")
        return "\n".join(lines)


def zero_shot_evaluation(
    model: nn.Module,
    dataset: Dataset,
    *,
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
) -> ZeroShotResult:
    """Zero-shot top-1/top-5 of a :class:`~bcosify.convert.BcosCLIP` and of its original.

    The class embeddings come from the original text tower; ``class_names`` defaults to the
    dataset's ``classes``.

    Example:
        >>> import open_clip
        >>> from bcosify.convert import convert_clip
        >>> vision = {"layers": 1, "width": 16, "head_width": 8, "patch_size": 8, "image_size": 16}
        >>> text = {"layers": 1, "width": 16, "heads": 2, "context_length": 8}
        >>> model, _ = convert_clip(open_clip.CLIP(8, vision, text))
        >>> data = torch.utils.data.TensorDataset(torch.rand(4, 3, 16, 16), torch.arange(4) % 2)
        >>> result = zero_shot_evaluation(model, data, class_names=["cat", "dog"])
        >>> sorted(result.teacher), result.num_examples
        (['top1', 'top5'], 4)
    """
    names = class_names if class_names is not None else getattr(dataset, "classes", None)
    if not names:
        raise EvaluationError(
            "zero-shot classification needs class names: pass class_names=, or a dataset with "
            "a `classes` attribute"
        )
    for attribute in ("original", "encode_text"):
        if not hasattr(model, attribute):
            raise EvaluationError(
                f"zero_shot_evaluation takes a B-cos CLIP (bcosify.convert.convert_clip), got "
                f"{type(model).__name__} without `{attribute}`"
            )
    classes = class_embeddings(model.encode_text, list(names), templates)
    return ZeroShotResult(
        teacher=zero_shot_accuracy(model.original, classes, dataset, batch_size=batch_size),
        student=zero_shot_accuracy(model, classes, dataset, batch_size=batch_size),
        templates=tuple(templates),
        num_examples=len(dataset),  # type: ignore[arg-type]
    )
