"""The command line's surface: every flag explained, the same shared flags everywhere, and
``bcosify --help`` without the optional heavy libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys

import torch
from commands import run_cli

cli = importlib.import_module("bcosify.cli.main")


def test_every_flag_of_every_command_has_help_text():
    missing = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, parser in cli.commands(cli.build_parser()).items()
        for action in parser._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


def test_every_command_takes_threads_and_debug():
    for name, parser in cli.commands(cli.build_parser()).items():
        flags = {flag for action in parser._actions for flag in action.option_strings}
        assert {"--threads", "--debug"} <= flags, name


def test_threads_apply_for_the_command_and_are_restored(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    before = torch.get_num_threads()
    seen = []
    original = torch.set_num_threads

    def record(count: int) -> None:
        seen.append(count)
        original(count)

    torch.set_num_threads = record
    try:
        status, _, _ = run_cli("example", "--out", str(tmp_path / "a-file"), "--threads", "1")
    finally:
        torch.set_num_threads = original
    assert seen[0] == 1 and seen[-1] == before and torch.get_num_threads() == before
    assert status != 0
    status, _, stderr = run_cli("example", "--threads", "0")
    assert status == 2 and "--threads" in stderr


def test_help_imports_no_optional_library():
    script = (
        "import sys\n"
        "from bcosify.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('captum', 'transformers', 'timm', 'open_clip', 'quantus', 'sklearn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
