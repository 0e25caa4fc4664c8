"""`fastdino probe`: kNN and linear probes on frozen teacher features."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def probe_command(ctx: typer.Context) -> None:
    """kNN and linear probes on frozen teacher features."""
    not_available("probe", 7)


def register(app: typer.Typer) -> None:
    app.command("probe", context_settings=PASS_THROUGH)(probe_command)
