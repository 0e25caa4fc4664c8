"""Every subcommand's ``--help``: a short description, then 2-3 runnable examples in the one
examples block (``commands._common.examples``) and no "Examples:" leaking into descriptions."""

from __future__ import annotations

import re

import pytest

from fastdino_cli.cli import COMMANDS, main
from fastdino_cli.commands._common import examples

# every leaf command a user can ask for help on
LEAVES = [
    ["pretrain"],
    ["plot-metrics"],
    ["probe"],
    ["corrupt-eval"],
    ["fourier-heatmap"],
    ["gradcam"],
    ["report"],
    ["curate"],
    ["demo"],
    ["presets", "list"],
    ["presets", "show"],
    ["presets", "reference"],
    ["checkpoint", "info"],
    ["checkpoint", "import"],
    ["checkpoint", "export"],
    ["data", "demo"],
]


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_the_list_covers_every_top_level_command():
    assert {argv[0] for argv in LEAVES} == {e.name for e in COMMANDS}


@pytest.mark.parametrize("argv", LEAVES, ids=" ".join)
def test_help_has_a_description_then_one_examples_block(argv, capsys, monkeypatch):
    out = _help(argv, capsys, monkeypatch)
    assert out.count("Examples:") == 1, out
    head, tail = out.split("Examples:")
    # the description comes before the options and says what the command does
    description = head.split("Usage:", 1)[1].split("\n", 1)[1].split("╭", 1)[0].strip()
    assert description and "Example" not in description, description
    # the block is last and holds only command lines, the first one of this very command
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3, lines
    assert lines[0].startswith("fastdino " + " ".join(argv)), lines
    assert all(ln.startswith("fastdino ") and "│" not in ln for ln in lines), lines
    if len(argv) == 1 and argv[0] not in ("presets", "checkpoint", "data"):
        assert len(lines) >= 2, lines  # the main commands show at least two ways to run them


def test_examples_block_escapes_markup_and_keeps_items_apart():
    block = examples("fastdino a x=[1,2]  # one", "fastdino b")
    assert block.startswith("Examples:\n\n")
    assert block.split("\n\n")[1:] == ["fastdino a x=\\[1,2]  # one", "fastdino b"]


def test_an_example_with_brackets_is_shown_as_typed(capsys, monkeypatch):
    out = _help(["presets", "show"], capsys, monkeypatch)
    tail = out.split("Examples:")[1]
    shown = [ln.strip() for ln in tail.splitlines() if "[" in ln]
    assert all("\\[" not in ln for ln in shown), shown


def test_top_level_summaries_are_one_line_without_examples(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = out.split("Examples:")[0]
    for entry in COMMANDS:
        assert re.search(rf"\W {re.escape(entry.name)} +{re.escape(entry.short_help[:30])}", listed)
