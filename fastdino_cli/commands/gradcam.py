"""`fastdino gradcam`: Grad-CAM maps of one or more checkpoints."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def gradcam_command(ctx: typer.Context) -> None:
    """Grad-CAM maps of one or more checkpoints."""
    not_available("gradcam", 10)


def register(app: typer.Typer) -> None:
    app.command("gradcam", context_settings=PASS_THROUGH)(gradcam_command)
