"""`fastdino demo`: the main job on the embedded demo data (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import examples


def demo_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the demo data, runs, logs and report.")
    ] = Path("demo_out"),
    full: Annotated[
        bool,
        typer.Option("--full", help="Corrupt-eval at all 5 severities (default 1, 3, 5)."),
    ] = False,
    steps_scale: Annotated[
        float,
        typer.Option(
            "--steps-scale", min=0.0, help="Multiply the training length (1.0: 500 steps)."
        ),
    ] = 1.0,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            help="Seeds of each recipe (runs/<name>-seed<N>); >1: the report shows intervals.",
        ),
    ] = 1,
) -> None:
    """Train the FastDINOv2 curriculum and the DINOv2 baseline on the demo data, evaluate both,
    and write one report (re-running reuses every finished step)."""
    from fastdino_cli.report.demo import run_demo

    path = run_demo(out, full=full, steps_scale=steps_scale, seeds=seeds)
    typer.echo(f"report: {path}")


EXAMPLES = examples(
    "fastdino demo                        # what `make demo` runs: demo_out/report/report.md",
    "fastdino demo --steps-scale 0.2      # a five times shorter training, for a first look",
    "fastdino demo --seeds 3              # 2 more seeds per recipe; report with 95% intervals",
)


def register(app: typer.Typer) -> None:
    app.command("demo", epilog=EXAMPLES)(demo_command)
