"""`fastdino corrupt-eval`: ImageNet-C robustness per corruption and severity."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def corrupt_eval_command(ctx: typer.Context) -> None:
    """ImageNet-C robustness per corruption and severity."""
    not_available("corrupt-eval", 8)


def register(app: typer.Typer) -> None:
    app.command("corrupt-eval", context_settings=PASS_THROUGH)(corrupt_eval_command)
