"""`fastdino checkpoint ...`: inspect (and later import/export) checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.checkpoint import inspect
from fastdino_cli.commands._common import JsonOpt

app = typer.Typer(help="Inspect, import and export checkpoints.", no_args_is_help=True)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


@app.command("info")
def info_command(
    path: Annotated[Path, typer.Argument(help="A fastdino checkpoint (.pt).")],
    as_json: JsonOpt = False,
) -> None:
    """Print format version, preset, arch, step/stage, entries present and sizes."""
    info = inspect(path)
    if as_json:
        typer.echo(json.dumps(asdict(info), indent=2, default=str))
        return
    present = ", ".join(k for k, v in info.entries.items() if v)
    absent = ", ".join(k for k, v in info.entries.items() if not v) or "-"
    arch = ", ".join(f"{k}={v}" for k, v in info.arch.items())
    lines = [
        f"file        {info.path} ({_human(info.file_size)})",
        f"format      fastdino v{info.version}",
        f"preset      {info.preset or '-'}",
        f"arch        {arch or '-'}",
        f"step        {info.step if info.step is not None else '-'}",
        f"stage       {info.stage if info.stage is not None else '-'}",
        f"entries     {present} (absent: {absent})",
    ]
    for key, n in info.num_params.items():
        lines.append(f"{key:<11} {n:,} tensor elements")
    if info.probe:
        lines.append("probe       " + ", ".join(f"{k}={v}" for k, v in info.probe.items()))
    typer.echo("\n".join(lines))
