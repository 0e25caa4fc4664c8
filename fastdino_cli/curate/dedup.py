"""Stage 2, deduplicate: near-duplicates inside the pool, and pool images that copy a query or
evaluation image (no test leakage into pretraining).

Inside the pool: the ``k`` nearest pool neighbours of every pool image (``pool_neighbours``,
written per shard so a killed run resumes), an edge for every pair with cosine >= ``threshold``,
connected components of that graph (``scipy.sparse.csgraph``), and the first image of each
component in pool order is kept. Chains count: a crop of a copy of an image is in its component
even when the crop and the image are below the threshold. Against the references: every pool
image kept so far whose nearest query (then evaluation) image has cosine >= ``ref_threshold`` is
removed. The defaults of both thresholds come from ``benchmarks/curation.py`` (docs/curate.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fastdino_cli.curate import store
from fastdino_cli.curate.index import Searcher
from fastdino_cli.curate.store import FeatureBank

Log = Callable[[str], None]


def pool_neighbours(
    bank: FeatureBank,
    folder: Path,
    k: int,
    make_searcher: Callable[[], Searcher],
    log: Log = lambda _: None,
) -> None:
    """``folder/shard_*.npz``: (sims, ids) of the ``k`` nearest other pool rows of each row.

    Shards already on disk with the right row count are skipped; the index is built only when
    some shard is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temp_files(folder)
    off = bank.offsets
    searcher = None
    for i in range(bank.num_shards):
        path = folder / f"{store.shard_name(i)}.npz"
        have = store.read_npz(path)
        if have is not None and len(have.get("ids", ())) == off[i + 1] - off[i]:
            continue
        if searcher is None:
            searcher = make_searcher()
        q = np.array(bank.shard(i), dtype=np.float32)  # read the shard into memory
        s, ids = searcher.search(q, k + 1)
        own = np.arange(off[i], off[i + 1])[:, None]
        s, ids = _drop_self(s, ids, own, k)
        store.write_npz(path, sims=s, ids=ids)
        log(f"deduplicate: neighbours of pool shard {i + 1}/{bank.num_shards}")


def _drop_self(s: np.ndarray, ids: np.ndarray, own: np.ndarray, k: int):
    """Remove each row's own id from its neighbour list (wherever it ranks), keep ``k``."""
    not_self = ids != own
    order = np.argsort(~not_self, axis=1, kind="stable")  # non-self first, order kept
    s, ids = np.take_along_axis(s, order, 1)[:, :k], np.take_along_axis(ids, order, 1)[:, :k]
    return s, ids


def read_neighbours(bank: FeatureBank, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = [store.read_npz(folder / f"{store.shard_name(i)}.npz") for i in range(bank.num_shards)]
    if any(p is None for p in parts):
        raise RuntimeError(f"{folder} lacks neighbour shards")
    return np.concatenate([p["sims"] for p in parts]), np.concatenate([p["ids"] for p in parts])


@dataclass
class PoolDuplicates:
    """Within-pool result: ``keep`` (rows), ``kept_for`` (each row's kept representative)."""

    keep: np.ndarray
    kept_for: np.ndarray
    component: np.ndarray
    edge_sim: np.ndarray  # each row's strongest similarity to another row (its 1-NN)


def components_above(sims: np.ndarray, ids: np.ndarray, threshold: float) -> PoolDuplicates:
    """Connected components of the graph of pairs with similarity >= ``threshold``."""
    n = len(sims)
    rows, cols = np.nonzero((sims >= threshold) & (ids >= 0))
    graph = coo_matrix((np.ones(len(rows)), (rows, ids[rows, cols])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    kept_for = first[comp]
    nn = sims[:, 0] if sims.shape[1] else np.full(n, -np.inf, np.float32)
    return PoolDuplicates(kept_for == np.arange(n), kept_for, comp, nn.astype(np.float32))


@dataclass
class ReferenceMatches:
    """For each pool row: its most similar reference image (row in that set) and the cosine."""

    sims: np.ndarray
    ids: np.ndarray


def nearest_reference(
    pool: FeatureBank, searcher: Searcher, mask: np.ndarray | None = None
) -> ReferenceMatches:
    """1-NN of every (masked) pool row among a reference set (rows outside the mask: -inf)."""
    sims = np.full(len(pool), -np.inf, dtype=np.float32)
    ids = np.full(len(pool), -1, dtype=np.int64)
    for chunk_ids, feats in pool.chunks(mask):
        s, i = searcher.search(feats, 1)
        sims[chunk_ids], ids[chunk_ids] = s[:, 0], i[:, 0]
    return ReferenceMatches(sims, ids)
