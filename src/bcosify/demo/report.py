"""The demo's report: its measurements as tables, plots and a gallery a person reads.

:func:`write_demo_report` takes the metrics of :func:`bcosify.demo.run_demo` (plain data,
as written to ``metrics.json``), the B-cosified model and the attributions of the first test
images, and writes ``report.html`` with its pictures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..explain import (
    colour_explanation,
    composite,
    contribution_map_image,
    explain,
    save_image,
)
from ..report.html import Figure, GalleryColumn, GalleryRow, Report, Table
from ..report.plots import interval_chart, line_chart
from .evaluation import COLOUR_GOAL, COLOUR_TARGET, above_posthoc_target

__all__ = ["DemoExamples", "colour_smoothing", "write_demo_report"]

# options that decide how fast a method runs, not what it computes
_PLUMBING = {"batch_size", "internal_batch_size", "perturbations_per_eval", "seed"}
# gallery pictures are enlarged to at least this many pixels a side, by an integer factor
_GALLERY_PIXELS = 96


# what the B-cosified model does with the network's max pooling, as the report's intro says it
_POOLING = {
    "avg": " (its max pooling converted to average pooling, as the published code does; the "
    "model from scratch keeps max pooling, with which it trains faster)",
    "keep": "",
}


def colour_smoothing(image_size: int) -> int:
    """The alpha smoothing of B-cos colour explanations at ``image_size``: the papers' 15 at
    224 pixels, scaled, and odd so that the window is centred.

    Example:
        >>> colour_smoothing(224), colour_smoothing(64), colour_smoothing(32)
        (15, 5, 3)
    """
    return max(1, round(15 * image_size / 224)) | 1


@dataclass
class DemoExamples:
    """The gallery's test images and what explains them.

    Attributes:
        model: the B-cosified model (its colour explanations are drawn from it).
        images, labels: ``(N, 3, H, W)`` and ``(N,)``.
        attributions: ``"method (model)"`` (as the demo's explanation results are named in
            its metrics) to the attributions of ``images`` for their labels.
        classes: the class names.
    """

    model: nn.Module
    images: Tensor
    labels: Tensor
    attributions: Mapping[str, Tensor]
    classes: Sequence[str]


def write_demo_report(out: Path, metrics: Mapping[str, Any], examples: DemoExamples) -> Path:
    """Write ``out / "report.html"`` and its pictures from the demo's ``metrics`` (as in
    ``metrics.json``) and its gallery ``examples``; returns the report's path."""
    s = metrics["settings"]
    extras = [f"{s['distractors']} distractor object(s)"] if s["distractors"] else []
    extras += ["textured"] if s["textured"] else []
    report = Report(
        "bcosify demo: B-cosification on synthetic shapes",
        f"An ordinary CNN trained until {s['finetune_epochs']} more epochs gained less than "
        f"{s['plateau_gain']} point of validation accuracy (the 'original'), B-cosified"
        f"{_POOLING[s['maxpool']]} and fine-tuned for {s['finetune_epochs']} epochs, against the "
        "original trained for as long (the control) and the same B-cos architecture trained "
        f"from scratch for {s['scratch_epochs']} epochs; {s['image_size']} x {s['image_size']} "
        f"images of {s['classes']} shapes{''.join(', ' + e for e in extras)}, on cluttered "
        "backgrounds. "
        "Intervals are bootstrap 95% intervals of the mean.",
        headline=list(metrics["headline"]),
    )
    report.tables += [
        _targets(metrics),
        _accuracy(metrics),
        _cost(metrics),
        _explanations(metrics),
        _baselines(metrics),
    ]
    report.figures += _figures(out, metrics)
    _gallery(out, report, metrics, examples)
    original = metrics["original_training"]
    report.notes += [
        f"The original: {s['standard_epochs']} epochs, then {len(original['cycle_gains'])} "
        f"continuation(s) of {s['finetune_epochs']} epochs, which gained "
        f"{', '.join(f'{g:+.1f}' for g in original['cycle_gains'])} points of validation "
        "accuracy; "
        + (
            f"the last gained less than {s['plateau_gain']}: a plateau, and that last "
            "continuation is the control"
            if original["plateau_reached"]
            else f"NO plateau within {s['max_cycles']} runs (the last continuation is the control)"
        )
        + (
            f"; loaded from the cache (trained in {original['seconds']:.0f} s by an earlier run)."
            if original["cached"]
            else f"; trained in {original['seconds']:.0f} s and cached for later runs."
        ),
        f"Settings: {json.dumps(s)}. Training in this run took {metrics['training_seconds']:.0f} "
        f"s, the whole run {metrics['total_seconds']:.0f} s (before writing this report), on "
        f"{_machine(metrics['machine'])}. All numbers are measured in this run.",
    ]
    return report.write(out)


def _machine(machine: Mapping[str, Any]) -> str:
    load = machine["load_before"], machine["load_after"]
    loads = (
        ""
        if None in load
        else f", 1-minute load average {load[0]:.1f} at the start and {load[1]:.1f} at the end"
    )
    return f"{machine['threads']} torch thread(s) of {machine['cores']} cores{loads}"


def _interval(value: Mapping[str, Any] | None, digits: int = 3, percent: bool = False) -> str:
    if not value or "error" in value:
        return "n/a"
    if percent:
        return f"{value['mean']:.1%} [{value['low']:.1%}, {value['high']:.1%}]"
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def _grids(metrics: Mapping[str, Any]) -> list[str]:
    first = next(iter(metrics["explanations"].values()))
    return list(first["pointing_game"])


def _targets(metrics: Mapping[str, Any]) -> Table:
    t = metrics["targets"]
    acc, gap = metrics["accuracy"], metrics["accuracy_gap_to_original"]["B-cosified"]
    own = metrics["explanations"]["bcos (B-cosified)"]
    scratch = metrics["explanations"]["bcos (B-cos from scratch)"]
    speed = metrics["speed"]
    race = speed["seconds_per_image"]
    rows = [
        [
            "B-cosified top-1 at most 1 point below the original (paired interval above -1)",
            f"{acc['B-cosified']['top1']['mean']:.1%} vs {acc['original']['top1']['mean']:.1%}"
            f" ({100 * gap['mean']:+.1f} points, paired interval {100 * gap['low']:+.1f} to "
            f"{100 * gap['high']:+.1f})",
            _yes(t["bcosified_within_1_point_of_the_original"]),
        ]
    ]
    for grid in _grids(metrics):
        for model, on in (("B-cosified", "the same model"), ("original", "the original")):
            posthoc = [
                v
                for v in metrics["explanations"].values()
                if v["method"] != "bcos" and v["model"] == model
            ]
            best = max(posthoc, key=lambda v: v["pointing_game"][grid].get("high", -1.0))
            rows.append(
                [
                    f"pointing game {grid}: B-cosified interval above every post-hoc method's "
                    f"on {on}",
                    f"{_interval(own['pointing_game'][grid])} vs highest post-hoc upper end "
                    f"{_interval(best['pointing_game'][grid])} ({best['method']})",
                    _yes(t[above_posthoc_target(grid, model)]),
                ]
            )
        rows.append(
            [
                f"pointing game {grid}: B-cosified not below B-cos from scratch",
                f"{_interval(own['pointing_game'][grid])} vs "
                f"{_interval(scratch['pointing_game'][grid])}",
                _yes(t[f"bcosified_pointing_game_{grid}_not_below_scratch"]),
            ]
        )
    fidelity = metrics["colour_fidelity"]["B-cosified"]
    rows += [
        [
            f"colour error of the B-cosified model's explanations at most {COLOUR_GOAL:.2f} "
            "(upper end)",
            f"{_interval(fidelity.get('colour_error'))}; colours shuffled between images "
            f"{_interval(fidelity.get('shuffled_control'))}; pixel colours rounded to 0 or 1 "
            f"{_interval(fidelity.get('rounded_reference'))}",
            _yes(t[COLOUR_TARGET]),
        ],
        [
            "B-cos explanation at least 20x faster than Integrated Gradients (50 steps)",
            f"{1000 * race['bcos']:.2f} ms vs {1000 * race['integrated_gradients']:.1f} ms per "
            f"image ({speed['ratio']:.0f}x; medians of {speed['rounds']} calls each, in turns)",
            _yes(t["bcos_20x_faster_than_integrated_gradients_50_steps"]),
        ],
        [
            "the whole run under 5 minutes",
            f"{metrics['total_seconds']:.0f} s"
            + (" (original from the cache)" if metrics["original_training"]["cached"] else ""),
            _yes(t["under_5_minutes"]),
        ],
    ]
    return Table(
        "Targets",
        ["target", "measured", "met"],
        rows,
        note="Judged on this run's intervals. 'Above' means the lower end of the B-cosified "
        "model's interval is above the upper end of the other's; 'not below' that its upper end "
        "is not below the other's lower end; n/a: not measurable in this run (too few "
        "confidently classified images for the grids). " + " ".join(metrics.get("caveats", [])),
    )


def _yes(met: bool | None) -> str:
    return "n/a" if met is None else "yes" if met else "no"


def _accuracy(metrics: Mapping[str, Any]) -> Table:
    s, curves = metrics["settings"], metrics["training_curves"]
    plateau = "to a plateau" if metrics["original_training"]["plateau_reached"] else "(no plateau)"
    trained = {
        "original": f"{len(curves['original']['epoch'])} epochs {plateau}",
        "original fine-tuned": f"the original + {s['finetune_epochs']} epochs (the control)",
        "B-cosified": f"the original, converted, + {s['finetune_epochs']} epochs",
        "B-cos from scratch": f"{s['scratch_epochs']} epochs from random weights",
    }
    rows = []
    for name, value in metrics["accuracy"].items():
        gap = metrics["accuracy_gap_to_original"].get(name)
        rows.append(
            [
                name,
                trained[name],
                _interval(value["top1"], percent=True),
                ""
                if gap is None
                else f"{100 * gap['mean']:+.1f} [{100 * gap['low']:+.1f}, "
                f"{100 * gap['high']:+.1f}]",
                f"{value['top5']:.1%}",
            ]
        )
    return Table(
        "Accuracy on the test set",
        ["model", "training", "top-1", "points vs the original", "top-5"],
        rows,
        note="The difference to the original is paired (the same test images), so its interval "
        "is narrower than the two accuracies' intervals suggest. The fine-tuned original is the "
        "control: it trains as long as the B-cosified model, without the conversion.",
    )


def _cost(metrics: Mapping[str, Any]) -> Table:
    c = metrics["cost"]
    budget = c["same_budget_epochs"]
    same = c["same_budget_val"]
    goal = (
        f"{c['scratch_final_val']:.1%} after {c['scratch_epochs']} epochs, "
        f"{c['scratch_seconds']:.0f} s"
    )
    if c["reached_at_epoch"] is None:
        rows = [["the from-scratch model's final validation accuracy", goal]]
        rows.append([f"the B-cosified model in its {budget} epochs", "never reached it"])
    elif c["reached_at_epoch"] == 0:
        # no speed-up to quote: converting alone is enough
        rows = [
            [
                "the B-cosified model, converted, before any fine-tuning",
                f"{metrics['training_curves']['B-cosified']['val_top1'][0]:.1%}: already at or "
                f"above the from-scratch model's final {goal}",
            ]
        ]
    else:
        rows = [
            ["the from-scratch model's final validation accuracy", goal],
            [
                "the B-cosified model first at or above it",
                f"epoch {c['reached_at_epoch']}, {c['reached_after_seconds']:.0f} s",
            ],
            [
                "speed-up (the paper: 4.7x to 9x)",
                f"{c['epoch_speedup']:.1f}x in epochs, {c['time_speedup']:.1f}x in time",
            ],
        ]
    rows.append(
        [
            f"validation accuracy after {budget} epochs each",
            f"B-cosified {_maybe_percent(same['B-cosified'])}, from scratch "
            f"{_maybe_percent(same['B-cos from scratch'])}",
        ]
    )
    return Table(
        "The cost of an interpretable model",
        ["measure", "value"],
        rows,
        note="Seconds of training, validation included; the original's own training is not "
        "counted (it is the pretrained model B-cosification starts from).",
    )


def _maybe_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _explanations(metrics: Mapping[str, Any]) -> Table:
    grids = _grids(metrics)
    results = metrics["explanations"]
    last = grids[-1]
    order = sorted(results, key=lambda k: -results[k]["pointing_game"][last].get("mean", -1.0))
    rows = [
        [
            name,
            *[_interval(results[name]["pointing_game"][g]) for g in grids],
            _interval(results[name]["mask_localisation"]),
            _interval(results[name]["deletion_auc"]),
            f"{1000 * results[name]['seconds_per_image']:.1f}",
        ]
        for name in order
    ]
    s = metrics["settings"]
    return Table(
        "Explanations",
        [
            "explanation (model)",
            *[f"pointing game {g}" for g in grids],
            "inside the mask",
            "deletion AUC (lower is better)",
            "ms per image",
        ],
        rows,
        note=f"Pointing game: {s['grids']} grids of n x n confidently classified test images of "
        "distinct classes, each explained for every cell's class; the share of positive "
        "attribution in the correct cell (1 is perfect, 1/n^2 uniform); intervals resample "
        f"grids. Inside the mask and deletion: the first {s['eval_images']} test images. "
        "Deletion AUC: the class probability as the most important pixels are removed first; "
        "compare it between explanations of the same model only (sigmoid probabilities for the "
        "B-cos models, softmax for the original). 'bcos' is each B-cos model's own explanation "
        "(one forward and one backward pass); the post-hoc methods explain the model in "
        "brackets: the original, and the B-cosified model itself, where they see the very "
        "function the B-cos explanation explains. Ms per image: the median of repeated calls "
        f"on the first {s['eval_images']} test images, every model channels-last (the faster "
        "layout on a CPU for all but some gradient methods of the original: benchmarks, "
        f"bench_layout). Sorted by the {last} pointing game.",
        highlight=[0],
    )


def _baselines(metrics: Mapping[str, Any]) -> Table:
    results = metrics["explanations"]
    references = metrics["references"]
    rows = []
    for name, r in results.items():
        if r["method"] == "bcos":
            continue
        detail = "; ".join(
            f"{'single images' if n == '1' else f'{n}x{n} grids'}: "
            + (
                ", ".join(f"{k}={v}" for k, v in options.items() if k not in _PLUMBING)
                or "defaults"
            )
            for n, options in r["options"].items()
        )
        if r["method"] == "gradcam":
            layer = r["layer"]
            detail = (
                f"layer {layer['name']} ({layer['resolution']} x {layer['resolution']} on a "
                "single image: the deepest feature map with at least 7 x 7, after its ReLU), the "
                "same layer on the grids"
            )
        # the larger budgets and the 50-step timing were measured on the original only
        check = references.get(r["method"], {}) if r["model"] == "original" else {}
        if "pointing_game" in check:
            budget = ", ".join(
                f"{k}={v}" for k, v in check["options"].items() if k not in _PLUMBING
            )
            detail += (
                f". With {budget}, on the first {check['grids']} {check['grid']} grids: pointing "
                f"game {check['pointing_game']:.3f} (with the settings above, the same grids: "
                f"{check['pointing_game_demo_budget']:.3f})"
            )
        if r["method"] == "integrated_gradients" and r["model"] == "original":
            speed = metrics["speed"]
            detail += (
                f". With {speed['ig_steps']} steps on the single images: "
                f"{1000 * speed['seconds_per_image']['integrated_gradients']:.1f} ms per image"
            )
        rows.append([name, detail])
    return Table(
        "How the post-hoc methods were run",
        ["method", "settings"],
        rows,
        note="Captum's implementations (RISE: ours). Perturbation methods use the same "
        "resolution per cell on both grids. The sampled methods (Integrated Gradients, RISE, "
        "LIME) run with budgets that fit the demo's time; each also runs with its published "
        "budget (or four times the demo's) on the first grids of the original, to show whether "
        "the smaller budget handicaps it.",
    )


# one colour per model in every plot
MODEL_COLOURS = {
    "original": "#4c78a8",
    "original fine-tuned": "#72b7b2",
    "B-cosified": "#e45756",
    "B-cos from scratch": "#f58518",
}


def _figures(out: Path, metrics: Mapping[str, Any]) -> list[Figure]:
    curves = metrics["training_curves"]
    finetuned = ("original fine-tuned", "B-cosified", "B-cos from scratch")
    original_final = curves["original"]["val_top1"][-1]
    goal = metrics["cost"]["scratch_final_val"]
    references = {"the original": original_final, "from scratch, final": goal}
    line_chart(
        out / "accuracy.png",
        {name: (curves[name]["epoch"], curves[name]["val_top1"]) for name in finetuned},
        title="Validation accuracy while fine-tuning",
        xlabel="epochs after the original (0: before)",
        ylabel="top-1",
        references=references,
        colours=MODEL_COLOURS,
    )
    line_chart(
        out / "accuracy_time.png",
        {name: (curves[name]["seconds"], curves[name]["val_top1"]) for name in finetuned[1:]},
        title="... against training time",
        xlabel="seconds of training",
        ylabel="top-1",
        references=references,
        colours=MODEL_COLOURS,
    )
    line_chart(
        out / "original.png",
        _runs(curves["original"], metrics["settings"]),
        title="The original, trained to a plateau",
        xlabel="epoch",
        ylabel="top-1",
    )
    results = metrics["explanations"]
    grids = _grids(metrics)
    names = list(results)
    series = {
        grid: [
            (g["mean"], g["low"], g["high"]) if "mean" in g else None
            for g in (results[name]["pointing_game"][grid] for name in names)
        ]
        for grid in grids
    }
    interval_chart(
        out / "pointing_game.png",
        names,
        series,
        title="Grid pointing game (95% intervals)",
        xlabel="score",
        references={grid: 1 / int(grid[0]) ** 2 for grid in grids},
    )
    colour = metrics["colour_fidelity"]
    measured = [name for name, value in colour.items() if "colour_error" in value]
    if measured:
        interval_chart(
            out / "colour.png",
            measured,
            {
                label: [
                    (v["mean"], v["low"], v["high"])
                    for v in (colour[name][key] for name in measured)
                ]
                for label, key in (
                    ("explanation", "colour_error"),
                    ("colours shuffled", "shuffled_control"),
                    ("pixel colours rounded to 0 or 1", "rounded_reference"),
                )
            },
            title="Colour error of B-cos explanations (95% intervals)",
            xlabel="|explanation colour - pixel colour| (0: own colours)",
        )
    colour_figure = (
        [
            Figure(
                "colour.png",
                "Colour fidelity: on each correctly classified evaluation image's strongest "
                "positive evidence inside the object, how far the explanation's colour is from "
                "the pixel's, against the same with colours shuffled between images, and the "
                "error of the pixels' own colours rounded to 0 or 1 per channel: what weights "
                "with every channel's side right but no input-independent part score.",
            )
        ]
        if measured
        else []
    )
    return [
        *colour_figure,
        Figure(
            "accuracy.png",
            "Validation accuracy per epoch of fine-tuning. The B-cosified model starts from the "
            "original's weights (epoch 0: converted, before fine-tuning); the B-cos model from "
            "scratch does not.",
        ),
        Figure("accuracy_time.png", "The same against seconds of training."),
        Figure("pointing_game.png", "Grid pointing game of every explanation; dashed: uniform."),
        Figure(
            "original.png",
            "The original's training: a first run, then continuations as long as the "
            "B-cosified model's fine-tuning while they paid (the last one, the control, is in "
            "the first plot).",
        ),
    ]


def _runs(
    curve: Mapping[str, Sequence[float]], s: Mapping[str, Any]
) -> dict[str, tuple[list[float], list[float]]]:
    """The original's curve cut into its runs: each continuation restarts its learning-rate
    schedule (and may dip at first), so each is drawn as a line of its own."""
    epochs, accuracy = list(curve["epoch"]), list(curve["val_top1"])
    first = s["standard_epochs"]
    runs = {"first run": (epochs[:first], accuracy[:first])}
    for index, start in enumerate(range(first, len(epochs), s["finetune_epochs"]), 1):
        end = start + s["finetune_epochs"]
        runs[f"continuation {index}"] = (epochs[start:end], accuracy[start:end])
    return runs


def _gallery(out: Path, report: Report, metrics: Mapping[str, Any], examples: DemoExamples) -> None:
    folder = out / "gallery"
    images, labels, attributions = examples.images, examples.labels, examples.attributions
    results = metrics["explanations"]
    grid = _grids(metrics)[-1]

    def score(name: str) -> str:
        game = results[name]["pointing_game"][grid]
        return f"pointing {grid}: {game['mean']:.2f}" if "mean" in game else f"pointing {grid}: n/a"

    e = explain(examples.model, images, target=labels)
    colour = colour_explanation(e.inputs, e.weights, smooth=colour_smoothing(images.shape[-1]))
    mine = "bcos (B-cosified)"
    posthoc = [
        k
        for k in attributions
        if results[k]["method"] != "bcos" and results[k]["model"] == results[mine]["model"]
    ]
    report.gallery_title = "Gallery: the first test images, explained for their class"
    report.gallery_note = (
        "B-cos colour: the B-cosified model's own explanation in colour (the colour each pixel "
        "would need to add to the logit, opacity its contribution), on black. The maps: "
        "positive evidence red, negative blue, each scaled to its own 99.5th percentile. The "
        "post-hoc methods explain the same B-cosified model. Enlarged without smoothing."
    )
    report.gallery_columns = [
        GalleryColumn("image"),
        GalleryColumn("B-cos colour", score(mine), dark=True),
        GalleryColumn("B-cos contributions", score(mine)),
        *[
            GalleryColumn(results[name]["method"].replace("_", " "), score(name))
            for name in posthoc
        ],
    ]
    scale = max(1, math.ceil(_GALLERY_PIXELS / images.shape[-1]))
    for i in range(len(images)):
        paths = [
            save_image(folder / f"{i}_image.png", _up(images[i].permute(1, 2, 0), scale)),
            save_image(folder / f"{i}_bcos_colour.png", _up(composite(colour[i]), scale)),
            save_image(
                folder / f"{i}_bcos_map.png",
                _up(contribution_map_image(attributions[mine][i].sum(0)), scale),
            ),
        ]
        for j, name in enumerate(posthoc):
            heat = contribution_map_image(attributions[name][i].sum(0))
            paths.append(save_image(folder / f"{i}_{j}_map.png", _up(heat, scale)))
        report.gallery.append(
            GalleryRow(examples.classes[int(labels[i])], [str(p.relative_to(out)) for p in paths])
        )


def _up(image: Tensor, factor: int) -> Tensor:
    return image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
