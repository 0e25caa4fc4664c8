"""`fastdino plot-metrics`: draw a run's metrics.jsonl to PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import examples


def plot_metrics_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (holds metrics.jsonl).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write (default RUN_DIR/metrics.png).")
    ] = None,
) -> None:
    """Plot losses, learning rate and crop size per step, with the stage switches marked."""
    from fastdino_cli.figures.training import plot_metrics

    typer.echo(f"wrote {plot_metrics(run_dir, out)}")


EXAMPLES = examples(
    "fastdino plot-metrics runs/demo                      # writes runs/demo/metrics.png",
    "fastdino plot-metrics runs/b16 --out figs/b16-curves.pdf",
)


def register(app: typer.Typer) -> None:
    app.command("plot-metrics", epilog=EXAMPLES)(plot_metrics_command)
