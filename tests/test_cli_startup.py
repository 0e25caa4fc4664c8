"""``fastdino --help`` and usage errors start without importing torch (issue 17 item 24).

The CPU time itself is measured by ``benchmarks/cli_startup.py``; these tests check what makes
it small, independent of the machine's speed: which modules a fresh interpreter has imported,
and that the top-level help is built from the static table in ``cli.py`` without importing any
command module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastdino_cli.cli import COMMANDS, EVALUATION, TRAINING, UTILITIES, main
from fastdino_cli.commands._lazy import build_command

HEAVY = ("torch", "matplotlib", "pandas", "pytorch_grad_cam")
COMMANDS_DIR = Path(__file__).resolve().parents[1] / "fastdino_cli" / "commands"


def _imported_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; -> which heavy and command modules it imported."""
    probe = (
        f"{code}\nimport json, sys\n"
        "print(json.dumps({'heavy': [m for m in %r if m in sys.modules], "
        "'commands': sorted(m for m in sys.modules if m.startswith('fastdino_cli.commands.') "
        "and not m.split('.')[-1].startswith('_'))}))" % (HEAVY,)
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=COMMANDS_DIR.parents[1],
        env=dict(os.environ, COLUMNS="100"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_nothing_heavy():
    found = _imported_after("import fastdino_cli.cli")
    assert found == {"heavy": [], "commands": []}


@pytest.mark.parametrize(
    "argv",
    [["--help"], [], ["no-such-command"], ["presets", "list"], ["presets", "--help"]],
    ids=["help", "no-args", "unknown-command", "presets-list", "presets-help"],
)
def test_top_level_help_and_errors_import_no_command_but_the_one_asked(argv):
    code = (
        f"from fastdino_cli.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    )
    found = _imported_after(code)
    assert found["heavy"] == []
    assert found["commands"] == (
        ["fastdino_cli.commands.presets"] if argv[:1] == ["presets"] else []
    )


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in COMMANDS])
def test_each_command_module_keeps_heavy_imports_inside_its_functions(entry):
    """So that ``fastdino CMD --help`` and its usage errors are cheap too."""
    found = _imported_after(f"import {entry.module}")
    assert found["heavy"] == [], f"{entry.module} imports {found['heavy']} at the top"


def test_the_table_lists_every_command_module_once():
    modules = {f"fastdino_cli.commands.{p.stem}" for p in COMMANDS_DIR.glob("[!_]*.py")}
    assert sorted(e.module for e in COMMANDS) == sorted(modules)
    assert len({e.name for e in COMMANDS}) == len(COMMANDS)
    assert {e.panel for e in COMMANDS} == {TRAINING, EVALUATION, UTILITIES}


@pytest.mark.parametrize("entry", COMMANDS, ids=[e.name for e in COMMANDS])
def test_every_table_row_builds_the_command_it_names(entry):
    command = build_command(entry)
    assert command.name == entry.name and command.rich_help_panel == entry.panel
    summary = entry.short_help
    assert summary and "\n" not in summary and "Example" not in summary and len(summary) <= 80


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_groups_commands_into_training_evaluation_and_utilities(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    where = {panel: out.index(f" {panel} ") for panel in (TRAINING, EVALUATION, UTILITIES)}
    assert where[TRAINING] < where[EVALUATION] < where[UTILITIES]
    for entry in COMMANDS:
        line = next(ln for ln in out.splitlines() if re.match(rf"\W {entry.name} ", ln))
        assert entry.short_help[:40] in line, (entry.name, line)
        start = where[entry.panel]
        later = [p for p in where.values() if p > start]
        assert start < out.index(line) < min(later, default=len(out)), entry.name
    assert "Examples:" not in out.split(f" {UTILITIES} ")[0]  # corrupt-eval's no longer leaks


@pytest.mark.parametrize(
    "argv",
    [
        ["presets", "--help"],
        ["presets", "list", "--help"],
        ["presets", "show", "--help"],
        ["presets", "reference", "--help"],
        ["checkpoint", "--help"],
        ["checkpoint", "info", "--help"],
        ["checkpoint", "import", "--help"],
        ["checkpoint", "export", "--help"],
        ["data", "--help"],
        ["data", "demo", "--help"],
    ],
    ids=lambda a: " ".join(a[:-1]),
)
def test_help_of_the_utility_commands_ends_with_examples(capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _run(argv, capsys)
    assert code == 0
    tail = out.split("Examples:", 1)
    assert len(tail) == 2, out
    examples = [ln.strip() for ln in tail[1].splitlines() if ln.strip()]
    assert examples and all(ln.startswith("fastdino ") for ln in examples), examples
    assert examples[0].startswith("fastdino " + " ".join(argv[:-1])), examples


def test_a_mistyped_command_gets_a_suggestion_from_the_table(capsys):
    code, _, err = _run(["fourier-heatmp"], capsys)
    assert code == 2 and "Did you mean 'fourier-heatmap'?" in err
