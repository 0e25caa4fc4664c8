"""`fastdino report`: compare finished runs in one markdown report (``report.build_report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import examples

EXAMPLES = examples(
    "fastdino report demo_out/runs/dinov2 demo_out/runs/fastdinov2 --out demo_out/report",
    "fastdino report runs/base runs/fast --out report/ --run-missing --data /datasets/in100",
    "fastdino report runs/base runs/base-seed1 runs/fast runs/fast-seed1 --out report/",
)


def report_command(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories; the first is the reference.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.md, CSV, PNG.")],
    run_missing: Annotated[
        bool,
        typer.Option("--run-missing", help="First run the evaluations whose outputs are missing."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="With --run-missing: folder holding labelled train/ and val/ "
            "(default: beside each run's data.train).",
        ),
    ] = None,
) -> None:
    """Compare runs: steps, wall-clock, FLOPs, images/s, kNN/linear, robustness, figures.

    Reads what pretrain, probe, corrupt-eval (--out RUN/corrupt-eval), fourier-heatmap
    (--out RUN/fourier) and gradcam (--out RUN/gradcam) wrote into each run directory; a
    missing section names the command that fills it. Runs that differ only in train.seed are
    one recipe: with several seeds the report adds mean +- std and 95% bootstrap intervals per
    recipe and of each recipe's difference to the first run's (paired by seed).
    """
    from fastdino_cli.report.build import build_report
    from fastdino_cli.report.steps import EvalSettings

    settings = EvalSettings()
    if data is not None:
        settings = EvalSettings(train=data / "train", val=data / "val")
    report = build_report(run_dirs, out, run_missing=run_missing, settings=settings)
    empty = {k: v for k, v in report.missing.items() if v}
    typer.echo(f"wrote {report.path} ({len(report.figures)} figures, CSV tables in {out})")
    if report.has_seeds:
        recipes = ", ".join(f"{r.name} ({len(r.runs)} runs)" for r in report.recipes)
        typer.echo(f"recipes, with 95% intervals over seeds: {recipes}")
    for section, labels in empty.items():
        typer.echo(f"missing {section}: {', '.join(labels)}")


def register(app: typer.Typer) -> None:
    app.command("report", epilog=EXAMPLES)(report_command)
