"""``curate(...) -> CurationResult``: the function behind ``fastdino curate`` (and a notebook's).

Embed (``embed.py``) -> pool neighbours and deduplication (``dedup.py``) -> retrieval
(``retrieve.py``) -> ``curated.txt`` (one absolute path per line, what ``pretrain
data.train=OUT/curated.txt`` reads), ``summary.json``, ``duplicates.tsv``, ``unreadable.tsv``,
optional symlinks and the two figures (``figures/curation.py``, drawn from the stored results).
Each stage is skipped when its outputs in ``OUT`` are complete for the same parameters, so a
killed run resumes and a change of, say, ``--dedup-threshold`` reuses the embeddings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdino_cli.checkpoint import load_teacher_backbone
from fastdino_cli.curate import store
from fastdino_cli.curate.dedup import (
    components_above,
    nearest_reference,
    pool_neighbours,
    read_neighbours,
)
from fastdino_cli.curate.embed import embed_set
from fastdino_cli.curate.index import build_searcher, choose_index
from fastdino_cli.curate.inputs import check_out, eval_set, pool_set, query_set
from fastdino_cli.curate.kmeans import POINTS_PER_CENTROID, assign, sample_rows, train_centroids
from fastdino_cli.curate.outputs import CurationResult, write_outputs
from fastdino_cli.curate.retrieve import Candidates, cluster_based, combine, sample_based
from fastdino_cli.curate.settings import CurateSettings
from fastdino_cli.curate.store import FeatureBank, Stage
from fastdino_cli.devices import resolve_device
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.features import default_recipe, model_hash
from fastdino_cli.rundir import RunLock

Log = Callable[[str], None]


def curate(
    pool: str | Path,
    query: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    *,
    eval_dirs: Sequence[str | Path] = (),
    settings: CurateSettings | None = None,
    device: str | torch.device | None = "auto",
    log: Log = lambda _: None,
) -> CurationResult:
    """Embed, deduplicate and retrieve; write ``OUT/curated.txt`` and the summary."""
    s = settings or CurateSettings()
    s.check()
    dev = resolve_device(device)
    choose_index(0, s.index, dev)  # an unknown index, or one without Faiss: fail before work
    images = [pool_set(pool), query_set(query, log)]
    evals = eval_set(eval_dirs)
    if evals is not None:
        images.append(evals)
    model, ckpt = load_teacher_backbone(checkpoint, device=dev)
    recipe = default_recipe(ckpt, resize=s.resize, crop=s.crop)
    out = check_out(out)
    with RunLock(out):
        embed_params = {"model": model_hash(model), "recipe": recipe.to_dict()}
        embed_params["shard_size"] = s.shard_size
        _check_embed_params(out, embed_params)
        stats = {}
        for im in images:
            stats[im.name] = embed_set(
                model, im, out / "embed" / im.name, recipe, device=dev,
                batch_size=s.batch_size, shard_size=s.shard_size, workers=s.workers, log=log,
            )  # fmt: skip
        del model
        banks = {im.name: FeatureBank.open(out / "embed" / im.name) for im in images}
        base = {name: _bank_digest(embed_params, banks[name]) for name in banks}
        timing = {"embed": _rate(stats["pool"].embedded, stats["pool"].seconds)}
        nb = _neighbour_stage(out, banks["pool"], base["pool"], s, dev, log)
        timing["search"] = _rate(nb.info().get("rows", 0), nb.info().get("seconds", 0.0))
        dd = _dedup_stage(out, banks, base, nb, s, dev, log)
        rt = _retrieve_stage(out, banks, dd, s, dev, log)
        return write_outputs(
            out, images, banks, stats, dd, rt, s, timing=timing,
            context={"checkpoint": str(checkpoint), "device": str(dev)}, log=log,
        )  # fmt: skip


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 1) if n and seconds > 0 else None


def _bank_digest(embed_params: dict[str, Any], bank: FeatureBank) -> str:
    return store.digest([embed_params, [str(p) for p in bank.files], len(bank)])


def _check_embed_params(out: Path, params: dict[str, Any]) -> None:
    """The embeddings in ``out`` must come from the same weights, transform and shard size."""
    path = out / "embed" / "params.json"
    found = store.read_json(path)
    if found is None:
        store.write_json(path, params)
        return
    if found != store.plain(params):
        what = [k for k in params if found.get(k) != store.plain(params)[k]]
        names = {
            "model": "checkpoint weights",
            "recipe": "image transform",
            "shard_size": "--shard-size",
        }
        raise ConfigError(
            f"{out} holds embeddings made with other {', '.join(names[w] for w in what)}; use a "
            f"new --out, or delete {out / 'embed'} to embed again"
        )


def _neighbour_stage(
    out: Path, pool: FeatureBank, pool_digest: str, s: CurateSettings, dev, log: Log
) -> Stage:
    index = choose_index(len(pool), s.index, dev, log)
    stage = Stage(out / "neighbours", {"pool": pool_digest, "k": s.dedup_k, "index": index})
    if stage.is_done():
        return stage
    stage.begin()
    t0 = time.perf_counter()
    todo = sum(
        not (stage.folder / f"{store.shard_name(i)}.npz").is_file() for i in range(pool.num_shards)
    )
    pool_neighbours(
        pool,
        stage.folder,
        s.dedup_k,
        lambda: build_searcher(
            pool, index=index, device=dev, memory_budget=s.memory_budget, seed=s.seed, log=log
        ),
        log,
    )
    seconds = time.perf_counter() - t0
    rows = int(len(pool) * todo / max(1, pool.num_shards))
    stage.finish({"seconds": seconds, "rows": rows, "index": index})
    return stage


def _dedup_stage(out, banks, base, nb: Stage, s: CurateSettings, dev, log: Log) -> Stage:
    pool = banks["pool"]
    params = {
        "neighbours": nb.digest,
        "threshold": s.dedup_threshold,
        "ref_threshold": s.ref_threshold,
        "refs": {name: base[name] for name in ("query", "eval") if name in banks},
    }
    stage = Stage(out / "dedup", params)
    if stage.is_done():
        return stage
    stage.begin()
    sims, ids = read_neighbours(pool, nb.folder)
    within = components_above(sims, ids, s.dedup_threshold)
    keep = within.keep.copy()
    arrays: dict[str, np.ndarray] = {
        "kept_for": within.kept_for,
        "nn_sim": within.edge_sim,
    }
    info = {"within_pool": int((~within.keep).sum())}
    for name in ("query", "eval"):
        if name not in banks:
            continue
        searcher = build_searcher(banks[name], index="auto", device=dev, log=log)
        full = nearest_reference(pool, searcher)  # every row: the histogram shows them all
        dup = keep & (full.sims >= s.ref_threshold)
        keep &= ~dup
        arrays[f"{name}_sim"], arrays[f"{name}_id"] = full.sims, full.ids
        arrays[f"{name}_dup"] = dup
        info[f"of_{name}"] = int(dup.sum())
    arrays["keep"] = keep
    store.write_npz(stage.folder / "dedup.npz", **arrays)
    info["kept"] = int(keep.sum())
    log(
        f"deduplicate: {info['within_pool']} near-duplicates inside the pool, "
        f"{info.get('of_query', 0)} of query images, {info.get('of_eval', 0)} of eval images"
    )
    stage.finish(info)
    return stage


def _retrieve_stage(out, banks, dd: Stage, s: CurateSettings, dev, log: Log) -> Stage:
    pool, query = banks["pool"], banks["query"]
    params = {
        "dedup": dd.digest,
        **{k: v for k, v in asdict(s).items() if k in _RETRIEVE_KEYS},
    }
    stage = Stage(out / "retrieve", params)
    if stage.is_done():
        return stage
    stage.begin()
    keep = store.read_npz(dd.folder / "dedup.npz")["keep"]
    q = query.load()
    if not keep.any():  # every pool image was a duplicate: nothing to search
        store.write_npz(stage.folder / "query_top.npz", sims=np.full((len(q), 8), -np.inf),
                        ids=np.full((len(q), 8), -1))  # fmt: skip
        store.write_npz(stage.folder / "selected.npz", **_empty_selection())
        stage.finish({"total": 0, "index": None})
        return stage
    searcher = build_searcher(
        pool, keep, index=s.index, device=dev, memory_budget=s.memory_budget, seed=s.seed, log=log
    )
    found, top_s, top_i = sample_based(q, searcher, s.k, s.min_similarity)
    parts = [found] if s.method in ("sample", "both") else []
    info: dict[str, Any] = {"sample": int(len(np.unique(found.pool)))}
    if s.method in ("cluster", "both"):
        n_kept = int(keep.sum())
        n_clusters = s.clusters or max(1, round(math.sqrt(n_kept)))
        sample = sample_rows(np.nonzero(keep)[0], n_clusters * POINTS_PER_CENTROID, s.seed)
        centroids = train_centroids(pool.rows(sample), n_clusters, seed=s.seed)
        pool_rows, pool_cluster, _ = assign(pool, centroids, keep)
        query_cluster = (torch.from_numpy(q) @ torch.from_numpy(centroids).T).argmax(1).numpy()
        per = s.per_cluster or len(pool)
        got = cluster_based(
            pool, pool_rows, pool_cluster, q, query_cluster, per, s.min_similarity, s.seed
        )
        parts.append(got)
        info["cluster"] = int(len(np.unique(got.pool)))
        store.write_npz(
            stage.folder / "clusters.npz",
            centroids=centroids,
            pool_rows=pool_rows,
            pool_cluster=pool_cluster,
            query_cluster=query_cluster,
        )
    both = combine(*parts) if parts else combine(Candidates.empty(1))
    store.write_npz(stage.folder / "query_top.npz", sims=top_s, ids=top_i)
    store.write_npz(
        stage.folder / "selected.npz", rows=both.rows, via=both.via, query=both.query, sim=both.sim
    )
    info["total"] = int(len(both.rows))
    info["index"] = searcher.name
    log(f"retrieve: {info['total']} pool images ({s.method})")
    stage.finish(info)
    return stage


def _empty_selection() -> dict[str, np.ndarray]:
    z = np.zeros(0, np.int64)
    return {"rows": z, "via": z, "query": z, "sim": np.zeros(0, np.float32)}


_RETRIEVE_KEYS = ("method", "k", "clusters", "per_cluster", "min_similarity", "seed", "index")
