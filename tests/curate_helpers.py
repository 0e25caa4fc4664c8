"""Hand-built embeddings for the curation tests: banks written straight to disk, and a scenario
(pool, labelled query, eval) whose every vector is chosen, fed to ``curate`` by replacing the
embedding function (``embed.embed_images``) so dedup, retrieval, outputs and the CLI run on
numbers the tests know."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastdino_cli.curate import store
from fastdino_cli.curate.index import faiss_module
from fastdino_cli.curate.store import FeatureBank

DIM = 16


@pytest.fixture
def single_threaded():
    """One thread for Faiss (OpenMP) and PyTorch: on a machine whose cores are shared, OpenMP's
    spinning threads make Faiss's small k-means ten times slower, never faster."""
    faiss = faiss_module()
    before = faiss.omp_get_max_threads() if faiss else None
    torch_before = torch.get_num_threads()
    if faiss:
        faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch_before)
    if faiss:
        faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_bank(folder: Path, feats: np.ndarray, shard_size: int = 8) -> FeatureBank:
    """A finished embedding set of ``feats`` (rows = files ``f_00000.png`` ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(feats)
    n_shards = max(1, -(-n // shard_size))
    for i in range(n_shards):
        lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
        store.write_shard(folder, i, feats[lo:hi], range(lo, hi), {})
    store.write_lines(folder / store.FILES, [str(folder / f"f_{j:05d}.png") for j in range(n)])
    store.write_json(folder / store.DONE, {"info": {"shards": n_shards, "dim": feats.shape[1]}})
    return FeatureBank.open(folder)


def clustered(n_per: int, centers: int, dim: int = DIM, spread: float = 0.1, seed: int = 0):
    """Unit vectors around ``centers`` random directions; (features, true cluster)."""
    rng = np.random.default_rng(seed)
    c = unit(rng.standard_normal((centers, dim)))
    labels = np.repeat(np.arange(centers), n_per)
    x = c[labels] + spread * rng.standard_normal((len(labels), dim))
    return unit(x), labels


def _noisy(direction: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` plus noise of norm ``scale`` in the dimensions 3.. (orthogonal to the class
    directions e0, e1, e2)."""
    noise = np.zeros(DIM, np.float32)
    noise[3:] = unit(rng.standard_normal(DIM - 3)) * scale
    return unit(direction + noise)


def scenario(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Files under ``root/{pool,query,eval}`` and the vector of each file stem.

    Pool: ``A_*`` (8) and ``B_*`` (8) near the query classes A (e0) and B (e1); distractors
    ``D_*`` (16) orthogonal to every class; ``dupA_0`` a copy of ``A_00`` and ``dupA_1`` a copy of
    ``dupA_0`` (a chain); ``dupQ`` a copy of query ``qA_0``; ``dupE`` a copy of eval ``E_0``;
    ``bad_0`` unreadable. Query: classes A (4), B (4) and C (2, direction e2, absent from the
    pool). Eval: ``E_0``, ``E_1`` (distractor-like). Files are empty: the tests replace the
    embedding function, which never reads them.
    """
    rng = np.random.default_rng(seed)
    e = np.eye(DIM, dtype=np.float32)
    vec: dict[str, np.ndarray] = {}
    for cls, d in (("A", e[0]), ("B", e[1])):
        for i in range(8):
            vec[f"{cls}_{i:02d}"] = _noisy(d, 0.8, rng)
        for i in range(4):
            vec[f"q{cls}_{i}"] = _noisy(d, 0.5, rng)
    for i in range(2):
        vec[f"qC_{i}"] = _noisy(e[2], 0.5, rng)
    for i in range(16):
        vec[f"D_{i:02d}"] = _noisy(np.zeros(DIM, np.float32), 1.0, rng)
    for i in range(2):
        vec[f"E_{i}"] = _noisy(np.zeros(DIM, np.float32), 1.0, rng)
    vec["dupA_0"] = unit(vec["A_00"] + 0.01 * rng.standard_normal(DIM))
    vec["dupA_1"] = unit(vec["dupA_0"] + 0.01 * rng.standard_normal(DIM))
    vec["dupQ"] = unit(vec["qA_0"] + 0.01 * rng.standard_normal(DIM))
    vec["dupE"] = unit(vec["E_0"] + 0.01 * rng.standard_normal(DIM))
    for stem in vec:
        if stem.startswith("q"):
            folder = root / "query" / stem[1]
        elif stem.startswith("E_"):
            folder = root / "eval"
        else:
            folder = root / "pool"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.png").write_bytes(b"")
    (root / "pool" / "bad_0.png").write_bytes(b"")
    return vec


def fake_embedder(vectors: dict[str, np.ndarray], calls: list | None = None):
    """A stand-in for ``embed.embed_images``: each file's vector by stem; ``bad*`` unreadable."""

    def embed_images(model, files, recipe, *, device, batch_size, workers):
        if calls is not None:
            calls.append([Path(f).stem for f in files])
        rows, feats, bad = [], [], {}
        for i, f in enumerate(files):
            stem = Path(f).stem
            if stem.startswith("bad"):
                bad[i] = "cannot identify image file"
            else:
                rows.append(i)
                feats.append(vectors[stem])
        out = np.stack(feats) if feats else np.zeros((0, DIM), np.float32)
        return out.astype(np.float32), rows, bad

    return embed_images
