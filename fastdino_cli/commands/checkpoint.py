"""`fastdino checkpoint ...`: inspect, import and export checkpoints (see ``interop.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import JsonOpt, examples

app = typer.Typer(
    help="Inspect checkpoints; import DINOv2 weights, export to timm or DINOv2.",
    no_args_is_help=True,
    add_completion=False,
    epilog=examples(
        "fastdino checkpoint info runs/demo/final.pt",
        "fastdino checkpoint import dinov2_vitb14_pretrain.pth --arch vit_base --out vitb14.pt",
        "fastdino checkpoint export runs/demo/final.pt --format timm --out model.safetensors",
    ),
)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


@app.command(
    "info",
    epilog=examples(
        "fastdino checkpoint info runs/demo/final.pt",
        "fastdino checkpoint info runs/demo/checkpoint.pt --json   # machine-readable",
    ),
)
def info_command(
    path: Annotated[Path, typer.Argument(help="A fastdino checkpoint (.pt).")],
    as_json: JsonOpt = False,
) -> None:
    """Print format version, preset, arch, step/stage, entries present and sizes."""
    from fastdino_cli.checkpoint import inspect

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


IMPORT_EXAMPLES = examples(
    "fastdino checkpoint import dinov2_vitb14_pretrain.pth --arch vit_base --out vitb14.pt",
    "fastdino checkpoint import dinov2_vits14_reg4_pretrain.pth --arch vit_small --patch 14 "
    "--registers 4 --out vits14_reg4.pt",
    "fastdino checkpoint import dinov2_vitb14_pretrain.pth --arch vit_base --img-size 224 "
    "--out vitb14_224.pt   # resample pos_embed once",
)

EXPORT_EXAMPLES = examples(
    "fastdino checkpoint export runs/x/final.pt --format timm --out model.safetensors",
    "fastdino checkpoint export runs/x/final.pt --format dinov2 --out backbone.pth",
)

ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")]


@app.command(
    "import",
    help="Convert official DINOv2 backbone weights (hub .pth layout, plain "
    "or chunked block names, with or without registers) into a fastdino checkpoint "
    "that every evaluation accepts. Strict: any key that maps nowhere is an error.",
    epilog=IMPORT_EXAMPLES,
)
def import_command(
    src: Annotated[Path, typer.Argument(help="DINOv2 weights: .pth state dict or .safetensors.")],
    arch: Annotated[
        str, typer.Option("--arch", help="vit_small | vit_base | vit_large | vit_giant2.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="fastdino checkpoint to write (.pt).")],
    patch: Annotated[
        int | None, typer.Option("--patch", help="Patch size (default: from the weights).")
    ] = None,
    registers: Annotated[
        int | None,
        typer.Option("--registers", help="Register tokens (default: from the weights)."),
    ] = None,
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            help="Position-grid image size (default: the stored grid, 518 for the releases); "
            "another value resamples pos_embed bicubically.",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    from fastdino_cli.interop import import_checkpoint

    path = import_checkpoint(
        src,
        out,
        arch=arch,
        patch_size=patch,
        num_register_tokens=registers,
        img_size=img_size,
        force=force,
    )
    typer.echo(f"wrote {path} ({arch}, teacher backbone only)")


@app.command(
    "export",
    help="Write the teacher backbone of a fastdino checkpoint as timm "
    "safetensors or a DINOv2 hub-format .pth state dict.",
    epilog=EXPORT_EXAMPLES,
)
def export_command(
    src: Annotated[Path, typer.Argument(help="A fastdino checkpoint (.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="timm (.safetensors) or dinov2 (.pth).")
    ] = "timm",
    force: ForceOpt = False,
    allow_interpolation_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-interpolation-mismatch",
            help="Export to timm even if the model resizes its position embedding in a way "
            "timm cannot reproduce (offset 0.1 or no antialias): features then differ from "
            "fastdino's at inputs other than the native size.",
        ),
    ] = False,
) -> None:
    from fastdino_cli.interop import export_checkpoint

    path = export_checkpoint(
        src,
        out,
        format=fmt,
        force=force,
        allow_interpolation_mismatch=allow_interpolation_mismatch,
    )
    typer.echo(f"wrote {path} ({fmt} format)")
