"""`fastdino pretrain`: Pretrain a ViT with DINOv2 and the FastDINOv2 curriculum."""

from __future__ import annotations

import typer

from fastdino_cli.commands._common import PASS_THROUGH, not_available


def pretrain_command(ctx: typer.Context) -> None:
    """Pretrain a ViT with DINOv2 and the FastDINOv2 curriculum."""
    not_available("pretrain", 4)


def register(app: typer.Typer) -> None:
    app.command("pretrain", context_settings=PASS_THROUGH)(pretrain_command)
