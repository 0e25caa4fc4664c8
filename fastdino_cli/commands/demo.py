"""`fastdino demo`: the main job on the embedded demo data (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.config import resolve_config
from fastdino_cli.data.demo import build_demo_dataset


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo data and runs.")] = Path(
        "demo_out"
    ),
) -> None:
    """Build the demo data and show what the demo trains (the full pipeline lands with #13)."""
    info = build_demo_dataset(out / "data")
    state = "reused" if info.reused else "built"
    typer.echo(
        f"demo data {state}: {info.root} ({info.num_classes} classes, "
        f"{info.num_train} train / {info.num_val} val)"
    )
    for preset in ("demo", "demo-dinov2"):
        cfg = resolve_config(preset)
        stages = ", ".join(
            f"{s.name or i}: until {s.end:.0%} at {s.global_crops_size}/{s.local_crops_size} px"
            for i, s in enumerate(cfg.curriculum.stages)
        )
        typer.echo(f"preset {preset}: {cfg.total_iterations} steps; {stages}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
