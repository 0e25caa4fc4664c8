"""`fastdino corrupt-eval`: ImageNet-C robustness per corruption and severity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import CheckpointsArg, examples
from fastdino_cli.devices import DEVICE_HELP
from fastdino_cli.rundir import CORRUPT_DIR

EXAMPLES = examples(
    "fastdino corrupt-eval runs/x/final.pt --imagenet-c /data/imagenet-c --clean /data/in1k/val",
    "fastdino corrupt-eval a.pt b.pt --val /data/in100/val --write-c /data/in100-c --workers 8",
    "fastdino corrupt-eval final.pt --val DIR --corruptions noise,fog --severities 1,3,5",
)


def corrupt_eval_command(
    checkpoints: CheckpointsArg,
    imagenet_c: Annotated[
        Path | None, typer.Option("--imagenet-c", help="Released ImageNet-C root.")
    ] = None,
    val: Annotated[
        Path | None, typer.Option("--val", help="Clean labelled folder, corrupted on the fly.")
    ] = None,
    clean: Annotated[
        Path | None, typer.Option("--clean", help="Clean folder for --imagenet-c clean accuracy.")
    ] = None,
    write_c: Annotated[
        Path | None, typer.Option("--write-c", help="Store the --val corrupted set (JPEG q85).")
    ] = None,
    corruptions: Annotated[
        str, typer.Option(help="Names, groups, 'benchmark' or 'all', comma-separated.")
    ] = "all",
    severities: Annotated[str, typer.Option(help="E.g. '1-5' or '1,3,5'.")] = "1-5",
    seed: Annotated[int, typer.Option(help="Seed of the on-the-fly corruptions.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0, help="Data-loader worker processes.")] = 2,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    max_per_class: Annotated[
        int | None, typer.Option(min=1, help="Use at most N images per class.")
    ] = None,
    resize_c: Annotated[
        bool,
        typer.Option(
            help="--imagenet-c: the probe's resize + crop, not a crop only (FastDINOv2's way)."
        ),
    ] = False,
    jpeg: Annotated[
        bool,
        typer.Option(help="--val: JPEG q85 round trip after corrupting, as the released files."),
    ] = True,
    out: Annotated[Path, typer.Option("--out", help="Folder for CSV, JSON and figures.")] = Path(
        CORRUPT_DIR
    ),
    figures: Annotated[bool, typer.Option(help="Draw the accuracy figures.")] = True,
    examples: Annotated[
        bool, typer.Option("--examples", help="Also draw one image under every corruption.")
    ] = False,
    example_image: Annotated[
        Path | None, typer.Option(help="Image for --examples (default: first clean image).")
    ] = None,
    example_severity: Annotated[int, typer.Option(min=1, max=5)] = 3,
) -> None:
    """ImageNet-C robustness per corruption and severity, means, mCE; tables and figures."""
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.eval.corruption.result import format_table
    from fastdino_cli.eval.corruption.run import run_corrupt_eval
    from fastdino_cli.figures.corruption import draw_corrupt_eval

    if examples and example_image is None and val is None and clean is None:
        raise ConfigError(
            "--examples needs a clean image: give --example-image PATH or --clean DIR"
        )
    result = run_corrupt_eval(
        checkpoints, imagenet_c=imagenet_c, val=val, clean=clean, write_c=write_c,
        corruptions=corruptions, severities=severities, seed=seed, batch_size=batch_size,
        workers=workers, device=device, max_per_class=max_per_class, resize_c=resize_c,
        jpeg=jpeg, out=out,
    )  # fmt: skip
    drawn = draw_corrupt_eval(
        result, out, bars=figures, examples=examples, example_image=example_image,
        example_severity=example_severity, seed=seed,
    )  # fmt: skip
    typer.echo(format_table(result))
    for kind, path in {**result.files, **drawn}.items():
        typer.echo(f"{kind}: {path}")


def register(app: typer.Typer) -> None:
    app.command("corrupt-eval", epilog=EXAMPLES)(corrupt_eval_command)
