"""`fastdino report`: Compare finished runs in one markdown report."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def report_command(ctx: typer.Context) -> None:
    """Compare finished runs in one markdown report."""
    not_available("report", 13)


def register(app: typer.Typer) -> None:
    app.command("report", context_settings=PASS_THROUGH)(report_command)
