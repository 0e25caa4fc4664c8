"""`fastdino gradcam`: Grad-CAM maps of one or more checkpoints, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import CheckpointsArg, examples
from fastdino_cli.devices import DEVICE_HELP
from fastdino_cli.eval.gradcam.spec import (
    DEFAULT_TARGET_LAYER,
    LAYER_HELP,
    METHOD_NAMES,
    TARGET_HELP,
)

EXAMPLES = examples(
    "fastdino gradcam runs/fast/final.pt runs/base/final.pt --data val/ --per-class 2 --out cam/",
    "fastdino gradcam runs/fast/final.pt --images photos/ --target class:cat",
    "fastdino gradcam runs/fast/final.pt --images photos/ --method eigencam   # no probe needed",
)


def gradcam_command(
    checkpoints: CheckpointsArg,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            "--images",
            help="Image file, folder (recursive) or .txt list of paths; repeat for several.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Labelled folder DIR/<class>/*: explain --per-class images."),
    ] = None,
    per_class: Annotated[int, typer.Option(help="Images per class taken from --data.")] = 2,
    target: Annotated[str, typer.Option(help=f"What each map explains: {TARGET_HELP}.")] = (
        "predicted"
    ),
    method: Annotated[
        str, typer.Option(help=f"Saliency method: {', '.join(METHOD_NAMES)}.")
    ] = "gradcam",
    layer: Annotated[str, typer.Option(help=LAYER_HELP)] = DEFAULT_TARGET_LAYER,
    prototype_data: Annotated[
        Path | None,
        typer.Option(help="Labelled folder whose class means are the prototypes (default --data)."),
    ] = None,
    prototype_per_class: Annotated[
        int, typer.Option(help="Images per class averaged into a prototype (0: all).")
    ] = 64,
    image_size: Annotated[
        int | None,
        typer.Option(help="Input side in px (default: the first probe's eval size, else arch)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per Grad-CAM batch.")] = 8,
    names: Annotated[
        str | None, typer.Option(help="Comma-separated column titles, one per checkpoint.")
    ] = None,
    aug_smooth: Annotated[
        bool, typer.Option(help="Average over flips and brightness scalings (6x slower).")
    ] = False,
    eigen_smooth: Annotated[
        bool, typer.Option(help="First principal component of the weighted activations.")
    ] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for choosing --per-class images.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("gradcam_out"),
) -> None:
    """Grad-CAM maps of one or more checkpoints: a grid PNG plus one .npy per map.

    Rows are images; columns the input and each checkpoint's overlay, titled with the
    checkpoint and the predicted/true class. The default target is the stored probe head's
    predicted class; checkpoints without a probe use --target self|prototype or
    --method eigencam.
    """
    from fastdino_cli.eval.gradcam.run import run_gradcam
    from fastdino_cli.figures.gradcam import draw_gradcam

    result = run_gradcam(
        checkpoints,
        images=images or None,
        data=data,
        per_class=per_class,
        target=target,
        method=method,
        target_layer=layer,
        prototype_data=prototype_data,
        prototype_per_class=prototype_per_class or None,
        image_size=image_size,
        batch_size=batch_size,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        names=[n.strip() for n in names.split(",")] if names else None,
        device=device,
        seed=seed,
        out=out,
    )
    grid = draw_gradcam(result, out)
    n_maps = sum(len(c.maps) for c in result.columns)
    typer.echo(
        f"{result.method}: {len(result.samples)} images x {len(result.columns)} checkpoints "
        f"-> {grid}, {n_maps} maps under {out / 'maps'}, {out / 'gradcam.json'}"
    )


def register(app: typer.Typer) -> None:
    app.command("gradcam", epilog=EXAMPLES)(gradcam_command)
