"""Stage 3, retrieve: the pool images that look like the query images (DINOv2's two ways).

- Sample-based: the ``k`` nearest (deduplicated) pool images of every query image.
- Cluster-based: spherical k-means over the pool; every cluster that a query image falls into
  (its most similar centroid) gives up to ``per_cluster`` of its images, a seeded random sample
  when it holds more, so the set covers each visual mode the queries touch, not only the closest
  neighbours of each query.

Both keep only pairs with cosine >= ``min_similarity`` to a query image (for cluster members: to
the most similar query image in their cluster), so a query class that is absent from the pool
retrieves nothing instead of its least bad matches. A retrieved image is credited to the query
image it is most similar to among those that retrieved it, and counted for that image's class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdino_cli.curate.index import Searcher
from fastdino_cli.curate.store import FeatureBank

SAMPLE, CLUSTER = 1, 2


@dataclass
class Candidates:
    """Retrieved (pool row, query row, cosine) triples of one method."""

    pool: np.ndarray
    query: np.ndarray
    sim: np.ndarray
    via: int

    @classmethod
    def empty(cls, via: int) -> Candidates:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), via)


def sample_based(
    query: np.ndarray, searcher: Searcher, k: int, min_similarity: float
) -> tuple[Candidates, np.ndarray, np.ndarray]:
    """The ``k`` nearest pool rows of each query row above the floor; also the raw top lists
    (sims, ids of the ``max(k, 8)`` nearest, for the figure)."""
    sims, ids = searcher.search(query, max(k, 8))
    s, i = sims[:, :k], ids[:, :k]
    ok = (i >= 0) & (s >= min_similarity)
    q = np.broadcast_to(np.arange(len(query))[:, None], i.shape)
    return Candidates(i[ok], q[ok], s[ok].astype(np.float32), SAMPLE), sims, ids


def cluster_based(
    pool: FeatureBank,
    pool_rows: np.ndarray,
    pool_cluster: np.ndarray,
    query: np.ndarray,
    query_cluster: np.ndarray,
    per_cluster: int,
    min_similarity: float,
    seed: int = 0,
) -> Candidates:
    """Up to ``per_cluster`` members of each cluster that holds a query image (see module doc)."""
    out = [Candidates.empty(CLUSTER)]
    order = np.argsort(pool_cluster, kind="stable")
    sorted_clusters = pool_cluster[order]
    for c in np.unique(query_cluster):
        lo, hi = np.searchsorted(sorted_clusters, [c, c + 1])
        members = pool_rows[order[lo:hi]]
        if not len(members):
            continue
        qs = np.nonzero(query_cluster == c)[0]
        sims = pool.rows(members) @ query[qs].T  # (members, queries of c)
        best = sims.argmax(axis=1)
        best_sim = sims[np.arange(len(members)), best]
        ok = np.nonzero(best_sim >= min_similarity)[0]
        if len(ok) > per_cluster:
            rng = np.random.default_rng([seed, int(c)])
            ok = np.sort(rng.choice(ok, size=per_cluster, replace=False))
        out.append(Candidates(members[ok], qs[best[ok]], best_sim[ok], CLUSTER))
    return Candidates(
        np.concatenate([o.pool for o in out]),
        np.concatenate([o.query for o in out]),
        np.concatenate([o.sim for o in out]).astype(np.float32),
        CLUSTER,
    )


@dataclass
class Retrieval:
    """The retrieved pool rows (sorted), how (bit 1 sample, bit 2 cluster), and the credited query
    row and cosine of each."""

    rows: np.ndarray
    via: np.ndarray
    query: np.ndarray
    sim: np.ndarray

    def counts_per_class(self, query_labels: np.ndarray, num_classes: int) -> np.ndarray:
        labels = query_labels[self.query] if len(self.query) else np.zeros(0, np.int64)
        return np.bincount(labels, minlength=num_classes)


def combine(*found: Candidates) -> Retrieval:
    """One entry per pool row: the best (highest cosine) of its triples; ``via`` ORs the methods."""
    pool = np.concatenate([f.pool for f in found]) if found else np.zeros(0, np.int64)
    if not len(pool):
        z = np.zeros(0, np.int64)
        return Retrieval(z, z.copy(), z.copy(), np.zeros(0, np.float32))
    query = np.concatenate([f.query for f in found])
    sim = np.concatenate([f.sim for f in found])
    via_each = np.concatenate([np.full(len(f.pool), f.via, np.int64) for f in found])
    rows, inverse = np.unique(pool, return_inverse=True)
    via = np.zeros(len(rows), np.int64)
    np.bitwise_or.at(via, inverse, via_each)
    # best triple per row: sort by (row, -sim, query) and take the first of each row
    order = np.lexsort((query, -sim, inverse))
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    return Retrieval(rows, via, query[first].astype(np.int64), sim[first].astype(np.float32))
