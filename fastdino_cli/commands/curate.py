"""`fastdino curate`: a pretraining set from an uncurated pool (``curate.run.curate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fastdino_cli.commands._common import examples
from fastdino_cli.curate.settings import CurateSettings
from fastdino_cli.devices import DEVICE_HELP

EXAMPLES = examples(
    "fastdino curate --pool /data/scraped --query /data/labelled --checkpoint runs/b16/final.pt "
    "--eval /data/labelled-val --out curation/",
    "fastdino curate --pool pool.txt --query examples/ --checkpoint vitb14.pt --out curation/ "
    "--json",
)

D = CurateSettings()  # the defaults (curate.settings imports neither torch nor faiss)
_Pool = Annotated[
    Path, typer.Option("--pool", help="Uncurated images: a folder (any tree) or a .txt list.")
]
_Query = Annotated[
    Path,
    typer.Option("--query", help="Curated examples: class sub-folders, or one flat folder."),
]
_Ckpt = Annotated[
    Path, typer.Option("--checkpoint", help="fastdino checkpoint (or `checkpoint import`ed).")
]
_Out = Annotated[Path, typer.Option("--out", help="Folder for the stages and curated.txt.")]
_Eval = Annotated[
    list[Path] | None,
    typer.Option("--eval", help="Evaluation images no pool image may duplicate (repeatable)."),
]
_Method = Annotated[str, typer.Option("--method", help="Retrieval: sample, cluster or both.")]
_K = Annotated[int, typer.Option("--k", min=1, help="Nearest pool images per query image.")]
_Clusters = Annotated[
    int | None, typer.Option("--clusters", min=1, help="k-means clusters (default sqrt(pool)).")
]
_PerCluster = Annotated[
    int | None,
    typer.Option("--per-cluster", min=1, help="At most this many images per cluster (no cap)."),
]
_Dedup = Annotated[
    float, typer.Option("--dedup-threshold", help="Cosine from which two pool images are copies.")
]
_RefDedup = Annotated[
    float,
    typer.Option("--ref-threshold", help="Cosine from which a pool image copies a query/eval one."),
]
_MinSim = Annotated[
    float,
    typer.Option("--min-similarity", help="Retrieve only pool images at least this close."),
]
_Index = Annotated[str, typer.Option("--index", help="auto, exact, flat or ivfpq (Faiss).")]
_Shard = Annotated[int, typer.Option("--shard-size", min=1, help="Images per embedding shard.")]
_Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
_Workers = Annotated[int, typer.Option("--workers", min=0, help="Image decoding processes.")]
_Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
_Symlinks = Annotated[
    bool, typer.Option("--symlinks", help="Also write OUT/curated/, one symlink per image.")
]
_NoFigures = Annotated[bool, typer.Option("--no-figures", help="Skip the two figures.")]
_Seed = Annotated[int, typer.Option("--seed", help="Seed of k-means and cluster sampling.")]
_AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
_Resize = Annotated[int | None, typer.Option("--resize", min=1, help="Resize (crop*256/224).")]
_Crop = Annotated[
    int | None, typer.Option("--crop", min=1, help="Crop (the checkpoint's final crop).")
]


def curate_command(
    pool: _Pool,
    query: _Query,
    checkpoint: _Ckpt,
    out: _Out,
    eval_dirs: _Eval = None,
    method: _Method = D.method,
    k: _K = D.k,
    clusters: _Clusters = D.clusters,
    per_cluster: _PerCluster = D.per_cluster,
    dedup_threshold: _Dedup = D.dedup_threshold,
    ref_threshold: _RefDedup = D.ref_threshold,
    min_similarity: _MinSim = D.min_similarity,
    index: _Index = D.index,
    shard_size: _Shard = D.shard_size,
    batch_size: _Batch = D.batch_size,
    workers: _Workers = D.workers,
    device: _Device = "auto",
    symlinks: _Symlinks = False,
    no_figures: _NoFigures = False,
    seed: _Seed = D.seed,
    as_json: _AsJson = False,
    resize: _Resize = D.resize,
    crop: _Crop = D.crop,
) -> None:
    """Embed, deduplicate and retrieve: a pretraining list (OUT/curated.txt) from a pool.

    Every stage resumes after a kill; re-running with other thresholds reuses the embeddings.
    """
    from fastdino_cli.curate.run import curate

    settings = CurateSettings(
        method=method, k=k, clusters=clusters, per_cluster=per_cluster,
        dedup_threshold=dedup_threshold, ref_threshold=ref_threshold,
        min_similarity=min_similarity, index=index, shard_size=shard_size,
        batch_size=batch_size, workers=workers, resize=resize, crop=crop, seed=seed,
        symlinks=symlinks, figures=not no_figures,
    )  # fmt: skip
    result = curate(
        pool, query, checkpoint, out, eval_dirs=eval_dirs or (), settings=settings,
        device=device, log=lambda line: typer.echo(line, err=True),
    )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result.summary, indent=2))
        return
    typer.echo(render_summary(result.summary))
    typer.echo(f"wrote {result.curated_list} ({result.retrieved} images)")
    typer.echo(f"next: fastdino pretrain --preset NAME data.train={result.curated_list}")


def render_summary(summary: dict[str, Any]) -> str:
    """The counts, then one line per query class."""
    d, r, p = summary["duplicates"], summary["retrieved"], summary["pool"]
    lines = [
        f"pool: {p['files']} images, {p['unreadable']} unreadable skipped",
        f"duplicates removed: {d['within_pool']} within the pool (cosine >= {d['threshold']:g}), "
        f"{d['of_query']} of query and {d['of_eval']} of eval images "
        f"(>= {d['ref_threshold']:g}); {summary['kept_after_dedup']} kept",
        f"retrieved: {r['total']} ({r['by_sample']} sample-based, {r['by_cluster']} "
        f"cluster-based; method {r['method']}, cosine >= {r['min_similarity']:g})",
    ]
    c = summary.get("clusters")
    if c:
        lines.append(
            f"clusters: {c['count']} (sizes {c['size_min']}-{c['size_max']}, median "
            f"{c['size_median']:g}), {c['with_query_images']} with query images"
        )
    width = max([len("class")] + [len(e["class"]) for e in r["per_class"]])
    lines += ["", f"{'class':<{width}}  queries  retrieved  median cosine"]
    for e in r["per_class"]:
        med = "-" if e["median_cosine"] is None else f"{e['median_cosine']:.3f}"
        lines.append(f"{e['class']:<{width}}  {e['queries']:>7}  {e['retrieved']:>9}  {med:>13}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("curate", epilog=EXAMPLES)(curate_command)
