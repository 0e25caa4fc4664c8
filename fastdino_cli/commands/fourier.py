"""`fastdino fourier-heatmap`: Fourier error-sensitivity heatmaps of one or more checkpoints."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def fourier_command(ctx: typer.Context) -> None:
    """Fourier error-sensitivity heatmaps of one or more checkpoints."""
    not_available("fourier-heatmap", 9)


def register(app: typer.Typer) -> None:
    app.command("fourier-heatmap", context_settings=PASS_THROUGH)(fourier_command)
