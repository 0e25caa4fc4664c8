"""What a curation leaves for the user, written from the stored stage results.

``curated.txt`` (one absolute path per line, pool order: ``pretrain data.train=OUT/curated.txt``),
``summary.json`` (counts, per-class retrieval, clusters, timings), ``duplicates.tsv`` (every
removed image, why, its match and the cosine), ``unreadable.tsv``, optionally ``curated/`` (one
symlink per retrieved image) and ``figures/``. Rebuilt on every run (cheap), so they always match
the stage results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastdino_cli.curate import store
from fastdino_cli.curate.embed import EmbedStats, ImageSet
from fastdino_cli.curate.retrieve import CLUSTER, SAMPLE
from fastdino_cli.curate.settings import CurateSettings
from fastdino_cli.curate.store import FeatureBank, Stage

LIST_NAME = "curated.txt"
SUMMARY_NAME = "summary.json"
GRID_ROWS, GRID_NEIGHBOURS = 8, 6


@dataclass
class CurationResult:
    """Paths of the outputs and the summary (``summary.json``'s content)."""

    out: Path
    curated_list: Path
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    symlinks: Path | None = None

    @property
    def retrieved(self) -> int:
        return int(self.summary["retrieved"]["total"])

    @property
    def per_class(self) -> dict[str, int]:
        return {c["class"]: c["retrieved"] for c in self.summary["retrieved"]["per_class"]}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


def write_outputs(
    out: Path,
    images: Sequence[ImageSet],
    banks: dict[str, FeatureBank],
    stats: dict[str, EmbedStats],
    dd: Stage,
    rt: Stage,
    s: CurateSettings,
    *,
    timing: dict[str, float | None],
    context: dict[str, str],
    log: Callable[[str], None],
) -> CurationResult:
    pool, qbank = banks["pool"], banks["query"]
    query = next(im for im in images if im.name == "query")
    sel = store.read_npz(rt.folder / "selected.npz")
    dedup = store.read_npz(dd.folder / "dedup.npz")
    top = store.read_npz(rt.folder / "query_top.npz")
    clusters = store.read_npz(rt.folder / "clusters.npz")
    rows = sel["rows"]
    store.write_lines(out / LIST_NAME, [os.path.abspath(p) for p in pool.paths(rows)])
    _write_duplicates(out / "duplicates.tsv", banks, dedup)
    _write_unreadable(out / "unreadable.tsv", banks)

    labels = np.asarray(query.labels or [0] * len(query.files), dtype=np.int64)[qbank.file_index]
    names = list(query.class_names or ["query"])
    per_class, warnings = _per_class(names, labels, sel, top["sims"][:, 0], s.min_similarity)
    info = dd.info()
    if info.get("kept", 1) == 0:
        warnings.insert(
            0,
            "every pool image was removed as a duplicate; look at figures/nn_similarity.png and "
            "raise --dedup-threshold / --ref-threshold",
        )
    unread = {n: st.unreadable for n, st in stats.items() if st.unreadable}
    for name, n in unread.items():
        warnings.insert(0, f"skipped {n} unreadable {name} image(s); see {out / 'unreadable.tsv'}")
    summary: dict[str, Any] = {
        "pool": _set_summary(stats["pool"]),
        "query": {**_set_summary(stats["query"]), "classes": len(names)},
        "eval": _set_summary(stats["eval"]) if "eval" in stats else None,
        "duplicates": {
            "within_pool": info.get("within_pool", 0),
            "of_query": info.get("of_query", 0),
            "of_eval": info.get("of_eval", 0),
            "threshold": s.dedup_threshold,
            "ref_threshold": s.ref_threshold,
        },
        "kept_after_dedup": info.get("kept", 0),
        "retrieved": {
            "total": int(len(rows)),
            "by_sample": int(((sel["via"] & SAMPLE) > 0).sum()),
            "by_cluster": int(((sel["via"] & CLUSTER) > 0).sum()),
            "per_class": per_class,
            "method": s.method,
            "k": s.k,
            "min_similarity": s.min_similarity,
        },
        "clusters": _cluster_summary(clusters, s),
        "index": rt.info().get("index"),
        "images_per_s": timing,
        "settings": {k: v for k, v in vars(s).items()},
        **context,
        "outputs": {"list": str(out / LIST_NAME)},
        "warnings": warnings,
    }
    result = CurationResult(out, out / LIST_NAME, summary, warnings)
    if s.symlinks:
        result.symlinks = write_symlinks(out / "curated", pool.paths(rows), rows)
        summary["outputs"]["symlinks"] = str(result.symlinks)
    if s.figures:
        result.figures = _figures(out, pool, qbank, labels, names, dedup, top, s)
        summary["outputs"]["figures"] = [str(p) for p in result.figures]
    store.write_json(out / SUMMARY_NAME, summary, sort_keys=False)
    for w in warnings:
        log(f"warning: {w}")
    return result


def _set_summary(st: EmbedStats) -> dict[str, int]:
    return {"files": st.files, "embedded": st.rows, "unreadable": st.unreadable}


def _per_class(names, labels, sel, best_sim, min_similarity):
    """One entry per query class, and a warning for every class that retrieved nothing."""
    credited = labels[sel["query"]] if len(sel["query"]) else np.zeros(0, np.int64)
    out, warnings = [], []
    for c, name in enumerate(names):
        mine = credited == c
        queries = labels == c
        best = float(best_sim[queries].max()) if queries.any() else float("nan")
        entry = {
            "class": name,
            "queries": int(queries.sum()),
            "retrieved": int(mine.sum()),
            "median_cosine": round(float(np.median(sel["sim"][mine])), 4) if mine.any() else None,
            "best_pool_cosine": round(best, 4) if np.isfinite(best) else None,
        }
        out.append(entry)
        if not mine.any():
            if not queries.any():
                why = "no readable query image"
            elif not np.isfinite(best):
                why = "no pool image is left after deduplication"
            elif best < min_similarity:
                why = f"best cosine {best:.3f} < --min-similarity {min_similarity:g}"
            else:
                why = "its pool neighbours went to other classes"
            warnings.append(
                f"query class {name!r} retrieved no pool image ({why}); is it in the pool?"
            )
    return out, warnings


def _cluster_summary(clusters: dict[str, np.ndarray] | None, s: CurateSettings) -> dict | None:
    if clusters is None:
        return None
    k = len(clusters["centroids"])
    sizes = np.bincount(clusters["pool_cluster"], minlength=k)
    hit = np.unique(clusters["query_cluster"])
    out: dict[str, Any] = {
        "count": int(k),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "with_query_images": int(len(hit)),
        "per_cluster_cap": s.per_cluster,
        "sizes_with_query_images": sorted((int(sizes[c]) for c in hit), reverse=True)[:100],
    }
    if k <= 200:
        out["sizes"] = [int(v) for v in sizes]
    return out


def _write_duplicates(path: Path, banks: dict[str, FeatureBank], dedup: dict) -> None:
    pool = banks["pool"]
    lines = ["removed\tduplicate_of\tmatch\tcosine"]
    n = len(pool)
    removed = np.nonzero(dedup["kept_for"] != np.arange(n))[0]
    if len(removed):
        kept = dedup["kept_for"][removed]
        cos = np.einsum("ij,ij->i", pool.rows(removed), pool.rows(kept))
        for r, k, c in zip(pool.paths(removed), pool.paths(kept), cos, strict=True):
            lines.append(f"{os.path.abspath(r)}\tpool\t{os.path.abspath(k)}\t{c:.4f}")
    for name in ("query", "eval"):
        if f"{name}_dup" not in dedup:
            continue
        dup = np.nonzero(dedup[f"{name}_dup"])[0]
        matches = banks[name].paths(dedup[f"{name}_id"][dup])
        for r, m, c in zip(pool.paths(dup), matches, dedup[f"{name}_sim"][dup], strict=True):
            lines.append(f"{os.path.abspath(r)}\t{name}\t{os.path.abspath(m)}\t{c:.4f}")
    store.write_lines(path, lines)


def _write_unreadable(path: Path, banks: dict[str, FeatureBank]) -> None:
    lines = ["set\tfile\treason"]
    for name, bank in banks.items():
        for i, why in sorted(bank.unreadable.items()):
            lines.append(f"{name}\t{os.path.abspath(bank.files[i])}\t{' '.join(why.split())}")
    store.write_lines(path, lines)


def write_symlinks(folder: Path, targets: Sequence[Path], rows: np.ndarray) -> Path:
    """``folder/<row>_<name>`` -> each target (the folder's old links are replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {
        f"{int(r):08d}_{Path(t).name}": os.path.abspath(t)
        for r, t in zip(rows, targets, strict=True)
    }
    for old in folder.iterdir():
        if old.is_symlink() and old.name not in wanted:
            old.unlink()
    for name, target in wanted.items():
        link = folder / name
        if link.is_symlink() and os.readlink(link) == target:
            continue
        tmp = folder / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return folder


def _figures(out, pool, qbank, labels, names, dedup, top, s: CurateSettings) -> list[Path]:
    from fastdino_cli.figures.curation import (
        RetrievalRow,
        plot_retrievals,
        plot_similarity_histogram,
    )

    picks = [int(np.nonzero(labels == c)[0][0]) for c in range(len(names)) if (labels == c).any()]
    if len(picks) == 1:  # one class: show several of its queries
        picks = list(range(min(GRID_ROWS, len(labels))))
    rows = []
    for q in picks[:GRID_ROWS]:
        ids, sims = top["ids"][q, :GRID_NEIGHBOURS], top["sims"][q, :GRID_NEIGHBOURS]
        ok = ids >= 0
        nb = list(zip(pool.paths(ids[ok]), sims[ok].tolist(), strict=True))
        rows.append(RetrievalRow(qbank.paths([q])[0], names[labels[q]], nb))
    refs = {name: dedup[f"{name}_sim"] for name in ("query", "eval") if f"{name}_sim" in dedup}
    return [
        plot_retrievals(rows, out / "figures" / "retrievals.png", min_similarity=s.min_similarity),
        plot_similarity_histogram(
            dedup["nn_sim"],
            s.dedup_threshold,
            out / "figures" / "nn_similarity.png",
            ref_sims=refs,
            ref_threshold=s.ref_threshold,
        ),
    ]
