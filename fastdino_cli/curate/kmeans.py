"""Spherical k-means for cluster-based retrieval: Faiss when installed, else PyTorch.

Centroids are trained on a seeded sample of the pool (``max_points`` at most, as Faiss does by
default: 256 per centroid) and kept L2-normalised (cosine k-means, as in DINOv2). Then every pool
image is assigned to its most similar centroid, shard by shard. The PyTorch fallback is Lloyd's
algorithm from a k-means++ start; an empty cluster is re-seeded with the point farthest from its
centroid. Both give the same partition on well-separated data (``tests/test_curate_stages.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from fastdino_cli.curate.index import faiss_module
from fastdino_cli.curate.store import FeatureBank

POINTS_PER_CENTROID = 256


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def train_centroids(
    x: np.ndarray, k: int, *, niter: int = 20, seed: int = 0, use_faiss: bool | None = None
) -> np.ndarray:
    """(k, D) unit-norm centroids of the rows of ``x`` (``k`` capped at the number of rows)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = max(1, min(k, len(x)))
    faiss = faiss_module() if use_faiss in (None, True) else None
    if use_faiss and faiss is None:
        raise RuntimeError("use_faiss=True but Faiss is not installed")
    if faiss is not None:
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=niter,
            seed=seed,
            spherical=True,
            max_points_per_centroid=max(POINTS_PER_CENTROID, -(-len(x) // k)),
            min_points_per_centroid=1,
            gpu=faiss.get_num_gpus() > 0,
            verbose=False,
        )
        km.train(x)
        return _normalize(np.asarray(km.centroids, dtype=np.float32))
    return _torch_kmeans(torch.from_numpy(x), k, niter, seed).numpy()


def _torch_kmeans(x: torch.Tensor, k: int, niter: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # k-means++ start (on cosine distance 1 - sim)
    first = int(torch.randint(len(x), (1,), generator=g))
    centroids = [x[first]]
    dist = (1 - x @ x[first]).clamp_min(0)
    for _ in range(1, k):
        p = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1 / len(x))
        nxt = int(torch.multinomial(p, 1, generator=g))
        centroids.append(x[nxt])
        dist = torch.minimum(dist, (1 - x @ x[nxt]).clamp_min(0))
    c = torch.stack(centroids)
    for _ in range(niter):
        sims = x @ c.T
        best, assign = sims.max(dim=1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # re-seed empty clusters
            far = int(best.argmin())
            new[j], best[far] = x[far], 1.0
        c = torch.nn.functional.normalize(new, dim=1)
    return c


def assign(bank: FeatureBank, centroids: np.ndarray, mask: np.ndarray | None = None):
    """(row ids, cluster of each, cosine to its centroid) for the (masked) rows of ``bank``."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    ids, clusters, sims = [], [], []
    for chunk_ids, feats in bank.chunks(mask):
        s, a = (torch.from_numpy(feats) @ c.T).max(dim=1)
        ids.append(chunk_ids)
        clusters.append(a.numpy())
        sims.append(s.numpy())
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(ids), np.concatenate(clusters).astype(np.int64), np.concatenate(sims)


def sample_rows(n_rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A sorted seeded sample of ``size`` ids out of ``n_rows`` (all of them when fewer)."""
    if len(n_rows) <= size:
        return np.asarray(n_rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=size, replace=False))
