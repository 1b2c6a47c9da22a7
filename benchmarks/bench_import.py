"""Import time: ``import bcosify`` and ``bcosify --help`` against ``import torch, torchvision``.

Each statement runs in a fresh Python process (the operating system's file cache warm after a
first unmeasured round), the statements interleaved round by round so that the machine's load
falls on all of them alike; the report gives the median of the rounds and the ratio of the
medians. bcosify itself imports torch and torchvision, so the ratio is what bcosify adds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from common import command_line, load_average, machine, publish

STATEMENTS = {
    "import torch, torchvision": "import torch, torchvision",
    "import bcosify": "import bcosify",
    "bcosify --help": (
        "from bcosify.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    ),
}
TARGET = 1.3
"""``import bcosify`` may cost at most this many times ``import torch, torchvision``."""


def seconds(statement: str) -> float:
    """Wall-clock seconds of a fresh interpreter running ``statement``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (7)")
    parser.add_argument("--write", help="markdown file whose section to (re)write")
    args = parser.parse_args(argv)
    for statement in STATEMENTS.values():  # warm the file cache, unmeasured
        seconds(statement)
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    load_before = load_average()
    for _ in range(args.rounds):
        for name, statement in STATEMENTS.items():
            times[name].append(seconds(statement))
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["import torch, torchvision"]
    rows = [
        f"| `{name}` | {medians[name]:.2f} | {min(v):.2f} to {max(v):.2f} | "
        f"{medians[name] / base:.2f}x |"
        for name, v in times.items()
    ]
    ratio = medians["import bcosify"] / base
    text = "\n".join(
        [
            "## Import time",
            "",
            f"Machine: {machine()}; load average {load_before} before, {load_average()} after.",
            f"Command: `{command_line('bench_import.py', argv)}`. Fresh processes, "
            f"{args.rounds} interleaved rounds after one unmeasured round; seconds.",
            "",
            "| statement | median | range | against torch + torchvision |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Target: `import bcosify` at most {TARGET}x `import torch, torchvision`: "
            f"{ratio:.2f}x, {'met' if ratio <= TARGET else 'not met'}.",
        ]
    )
    return publish(text, "bench_import", args.write)


if __name__ == "__main__":
    sys.exit(main())
