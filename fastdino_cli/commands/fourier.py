"""`fastdino fourier-heatmap`: Fourier error-sensitivity heatmaps of one or more checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import CheckpointsArg, examples
from fastdino_cli.devices import DEVICE_HELP

EXAMPLES = examples(
    "fastdino fourier-heatmap runs/fast/final.pt runs/base/final.pt --data /datasets/in100/val "
    "--window 63 --radial --out figs/fourier",
    "fastdino fourier-heatmap runs/demo/final.pt --data demo_out/data/val --max-images 50",
)


def fourier_command(
    checkpoints: CheckpointsArg,
    data: Annotated[
        Path, typer.Option("--data", help="Labelled folder (<class>/<image>), e.g. the val set.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for arrays, metadata and figures.")],
    eps: Annotated[
        float | None,
        typer.Option(
            "--eps",
            help="L2 norm of the perturbation per channel in [0,1] pixels "
            "[default: 15.7*size/224, the paper's ImageNet amplitude].",
            show_default=False,
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            "--size",
            help="Image size, a multiple of the patch size [default: the probe's crop size].",
            show_default=False,
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            "--window", help="Odd K: only the centred KxK low-frequency window (paper: 63)."
        ),
    ] = None,
    images_per_class: Annotated[
        int, typer.Option("--images-per-class", help="Random images per class (paper: 5; 0 = all).")
    ] = 5,
    max_images: Annotated[
        int | None, typer.Option("--max-images", help="Cap on the images, balanced over classes.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds image choice and signs.")] = 0,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Perturbed images per forward pass.")
    ] = 256,
    radial: Annotated[
        bool, typer.Option("--radial", help="Also plot error vs frequency radius.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    bf16: Annotated[
        bool,
        typer.Option("--bf16", hidden=True, help="Deprecated: the probe's precision is used."),
    ] = False,
) -> None:
    """Fourier error-sensitivity heatmaps (Yin et al. 2019) of one or more checkpoints.

    Each checkpoint needs a probe head (`fastdino probe` stores it). An interrupted run resumes
    from the frequencies already done when started again with the same arguments.
    """
    from fastdino_cli.eval.fourier.run import run_fourier_heatmaps
    from fastdino_cli.figures.fourier import draw_fourier_run

    if bf16:
        typer.echo(
            "fastdino: warning: --bf16 is deprecated and ignored: the classifier runs with the "
            "precision its probe head was trained with",
            err=True,
        )
    run = run_fourier_heatmaps(
        checkpoints,
        data,
        out,
        eps=eps,
        size=size,
        window=window,
        images_per_class=images_per_class or None,
        max_images=max_images,
        seed=seed,
        batch_size=batch_size,
        radial=radial,
        device=device,
    )
    for label, result in zip(run.labels, run.results, strict=True):
        typer.echo(
            f"{label}: clean error {result.clean_error:.4f}, mean error over "
            f"{len(result.freqs)} bases {float(result.per_frequency.mean()):.4f}; top-5: clean "
            f"{result.clean_error_top5:.4f}, mean {float(result.per_frequency_top5.mean()):.4f}"
        )
    for path in [*run.files["shared"], *draw_fourier_run(run)]:
        typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("fourier-heatmap", epilog=EXAMPLES)(fourier_command)
