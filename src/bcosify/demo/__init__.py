"""The demos: the main job end to end on built-in data, as library code.

:func:`run_demo` (images: the synthetic shapes) and :func:`run_text_demo` (the synthetic text
task) train an original, B-cosify it, train the same B-cos architecture from scratch, measure
accuracy and every explanation method, and write a report; ``bcosify demo`` runs them, and the
benchmarks call them over several seeds.

- :mod:`~bcosify.demo.settings`: the image demo's settings and presets;
- :mod:`~bcosify.demo.training`: its models (the original cached between runs);
- :mod:`~bcosify.demo.evaluation`: its measurements and targets;
- :mod:`~bcosify.demo.report`: its report;
- :mod:`~bcosify.demo.image` and :mod:`~bcosify.demo.text`: the two demos.
"""

from .image import run_demo
from .settings import PRESETS, DemoSettings
from .text import TEXT_PRESETS, TextDemoSettings, run_text_demo

__all__ = [
    "PRESETS",
    "TEXT_PRESETS",
    "DemoSettings",
    "TextDemoSettings",
    "run_demo",
    "run_text_demo",
]
