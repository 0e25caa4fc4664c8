"""Options shared by several subcommands (defined once, as ``Annotated`` aliases), and the
examples block every ``--help`` ends with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

OVERRIDES_HELP = "Config overrides as dotted key=value pairs, e.g. optim.base_lr=1e-3."

PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="Preset name (see `fastdino presets list`).")
]
ConfigFileOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file merged over the preset.")
]
OverridesArg = Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)]
CheckpointsArg = Annotated[
    list[Path], typer.Argument(help="One or more fastdino checkpoints (.pt).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def examples(*commands: str) -> str:
    """The examples block of a ``--help``: pass it as ``epilog=`` of ``app.command(...)`` or
    ``typer.Typer(...)``.

    Each item is one command line, optionally followed by ``# what it does``. Items are separate
    paragraphs (Typer's rich help joins single line breaks) and ``[`` is escaped, so a value such
    as ``curriculum.stages=[{end: 0.5}]`` is shown as typed, not read as rich markup. Keeping the
    block out of ``help=`` also keeps it out of the one-line summaries of command lists.
    """
    body = "\n\n".join(c.replace("[", "\\[") for c in commands)
    return f"Examples:\n\n{body}"
