"""`fastdino probe`: kNN and linear probes on frozen teacher features (``eval.probe.run_probe``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from fastdino_cli.commands._common import CheckpointsArg, examples
from fastdino_cli.devices import DEVICE_HELP
from fastdino_cli.errors import ConfigError

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

EXAMPLES = examples(
    "fastdino probe runs/demo/final.pt --train demo_out/data/train --val demo_out/data/val",
    "fastdino probe runs/x/final.pt --train IN/train --val IN/val --shots 1,2,5,10 --tries 5",
    "fastdino probe runs/x/final.pt --train IN/train --val IN/val --test imagenet-r --refit",
)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: expected comma-separated integers, e.g. 10,20"
        ) from None
    if not values:
        raise ConfigError(f"{flag} {text!r}: give at least one value")
    return values


_Train = Annotated[Path, typer.Option("--train", help="Labelled train folder (class sub-folders).")]
_Val = Annotated[Path, typer.Option("--val", help="Labelled val folder (same classes).")]
_K = Annotated[str, typer.Option("--k", help="kNN neighbour counts, comma-separated.")]
_Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Linear-head epochs over train.")]
_BatchSize = Annotated[
    int, typer.Option("--batch-size", min=1, help="Linear-head batch (lr scales by batch/256).")
]
_Holdout = Annotated[
    float, typer.Option("--holdout", help="Fraction of train held out to choose the head.")
]
_NLastBlocks = Annotated[
    str, typer.Option("--n-last-blocks", help="Blocks whose CLS the heads read, comma-separated.")
]
_BaselineRandom = Annotated[
    bool, typer.Option("--baseline-random", help="Also probe the same architecture at random init.")
]
_Augment = Annotated[
    bool,
    typer.Option(
        "--augment",
        help="Train the heads on RandomResizedCrop+flip views (re-extracted every epoch, slow).",
    ),
]
_Invariance = Annotated[
    bool,
    typer.Option("--invariance", help="Also measure view invariance per augmentation strategy."),
]
_Out = Annotated[
    Path | None,
    typer.Option("--out", help="Write the checkpoint with its probe head here, not in place."),
]
_NoWrite = Annotated[
    bool, typer.Option("--no-write", help="Store nothing: no probe head, no probe.json.")
]
_AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
_Csv = Annotated[Path | None, typer.Option("--csv", help="Also write the table as CSV.")]
_NoCache = Annotated[
    bool, typer.Option("--no-cache", help="Recompute features; neither read nor write the cache.")
]
_Resize = Annotated[
    int | None, typer.Option("--resize", min=1, help="Eval resize (default crop*256/224).")
]
_Crop = Annotated[
    int | None,
    typer.Option("--crop", min=1, help="Eval crop (default the final-stage global crop)."),
]
_Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
_Workers = Annotated[
    int, typer.Option("--workers", min=0, help="Data-loader workers for feature extraction.")
]
_Seed = Annotated[
    int, typer.Option("--seed", help="Seed of the split, heads, views and random init.")
]


_Shots = Annotated[
    str | None,
    typer.Option("--shots", help="Few-shot kNN/linear: images per class, e.g. 1,2,5,10."),
]
_Tries = Annotated[
    int, typer.Option("--tries", min=1, help="Seeded draws per --shots value (mean and std).")
]
_Test = Annotated[
    list[Path] | None,
    typer.Option(
        "--test",
        metavar="DIR",
        help="Extra labelled folder with a subset of the classes (ImageNet-A/-R); repeatable.",
    ),
]
_Refit = Annotated[
    bool,
    typer.Option("--refit", help="Retrain the chosen head on all of train; store that one."),
]
_TopConfusions = Annotated[
    int, typer.Option("--top-confusions", min=0, help="Confusion pairs shown and kept.")
]
_NoFigures = Annotated[
    bool, typer.Option("--no-figures", help="Skip the per-class accuracy figure.")
]


def probe_command(
    checkpoints: CheckpointsArg,
    train: _Train,
    val: _Val,
    k: _K = "10,20,100,200",
    epochs: _Epochs = 10,
    batch_size: _BatchSize = 256,
    holdout: _Holdout = 0.1,
    n_last_blocks: _NLastBlocks = "1,4",
    baseline_random: _BaselineRandom = False,
    augment: _Augment = False,
    invariance: _Invariance = False,
    out: _Out = None,
    no_write: _NoWrite = False,
    as_json: _AsJson = False,
    csv: _Csv = None,
    no_cache: _NoCache = False,
    resize: _Resize = None,
    crop: _Crop = None,
    device: _Device = "auto",
    workers: _Workers = DEFAULT_WORKERS,
    seed: _Seed = 0,
    shots: _Shots = None,
    tries: _Tries = 5,
    test: _Test = None,
    refit: _Refit = False,
    top_confusions: _TopConfusions = 10,
    no_figures: _NoFigures = False,
) -> None:
    """kNN and linear probes on frozen teacher features; stores the chosen head in the checkpoint.

    The linear head is chosen on a split held out from --train, then evaluated once on --val;
    "best on val" is the reference protocol's optimistic figure, shown for comparison.
    Per-class accuracy and top confusions go to probe/ beside the checkpoint (see docs/probe.md).
    """
    from fastdino_cli.eval.probe.result import format_table
    from fastdino_cli.eval.probe.run import run_probe

    report = run_probe(
        checkpoints, train, val, ks=_ints(k, "--k"), epochs=epochs, batch_size=batch_size,
        holdout=holdout, n_last_blocks=_ints(n_last_blocks, "--n-last-blocks"),
        baseline_random=baseline_random, augment=augment, invariance=invariance, out=out,
        write=not no_write, use_cache=not no_cache, resize=resize, crop=crop, device=device,
        num_workers=workers, seed=seed, csv=csv,
        shots=_ints(shots, "--shots") if shots is not None else (), tries=tries,
        tests=test or (), refit=refit, top_confusions_n=top_confusions,
    )  # fmt: skip
    drawn = []
    if not no_figures:
        from fastdino_cli.figures.probe import draw_probe

        drawn = draw_probe(report)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(format_table(report))
    for row in report.rows:
        if row.stored_in:
            which = "refit " if row.refit else ""
            typer.echo(f"probe head ({which}{row.linear.spec.label()}) stored in {row.stored_in}")
    for path in drawn:
        typer.echo(f"per-class accuracy: {path} (and its .csv)")


def register(app: typer.Typer) -> None:
    app.command("probe", epilog=EXAMPLES)(probe_command)
