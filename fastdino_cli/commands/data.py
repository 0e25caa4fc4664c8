"""`fastdino data demo OUT_DIR`: build the embedded demo dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import examples

app = typer.Typer(
    help="Build the embedded demo dataset (no download).",
    no_args_is_help=True,
    add_completion=False,
    epilog=examples("fastdino data demo demo_data"),
)


@app.command(
    "demo",
    epilog=examples(
        "fastdino data demo demo_data   # demo_data/train and demo_data/val, 64 px",
        "fastdino data demo small --size 32 --train-per-class 8 --val-per-class 4",
        "fastdino pretrain --preset demo data.train=demo_data/train   # then train on it",
    ),
)
def demo_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write train/ and val/ into.")],
    size: Annotated[int, typer.Option(help="Side of the square images in pixels.")] = 64,
    train_per_class: Annotated[int, typer.Option(help="Training images per class.")] = 48,
    val_per_class: Annotated[int, typer.Option(help="Validation images per class.")] = 16,
    seed: Annotated[int, typer.Option(help="Generation seed.")] = 0,
) -> None:
    """Build the labelled demo dataset from photographs bundled with scikit-image (no download).

    Only a folder that is new, empty or built by fastdino before is written to.
    """
    from fastdino_cli.data.demo import build_demo_dataset

    info = build_demo_dataset(
        out_dir, size=size, train_per_class=train_per_class, val_per_class=val_per_class, seed=seed
    )
    state = "reused" if info.reused else "built"
    typer.echo(
        f"{state} {info.root}: {info.num_classes} classes, {info.num_train} train / "
        f"{info.num_val} val images at {size} px"
    )
