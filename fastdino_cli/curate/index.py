"""Nearest-neighbour search over a ``FeatureBank``: which index, and how a big pool is searched.

Features are L2-normalised, so the inner product is the cosine similarity. Three indexes:

- ``exact``: PyTorch matrix products and top-k on ``--device`` (a GPU when there is one), with
  the kNN probe's merge over bank chunks (``eval.probe.knn.topk_neighbours``). Needs no Faiss.
- ``flat``: Faiss's exact search (``faiss.knn``), the same answers on the CPU.
- ``ivfpq``: Faiss IVF-PQ: ``nlist`` inverted lists (about 4 sqrt(N)) and product-quantised codes
  (``dim / 16`` bytes per image instead of ``4 dim``), probing ``nprobe`` lists per query. Its
  candidates (``RERANK`` times ``k``) are re-scored with the exact cosine read back from the
  shards, so a similarity reported or compared to a threshold is never a PQ approximation; what
  IVF-PQ can miss is a neighbour that is not among the candidates.

``auto`` picks ``ivfpq`` from ``IVF_THRESHOLD`` pool images when Faiss is installed, else
``exact`` on a CUDA device and ``flat`` on the CPU; without Faiss, ``exact`` at every size, with a
one-line hint to install the ``curate`` extra when the pool is large (exact search of a pool
against itself grows with the square of its size).

Sharded search: a bank larger than ``memory_budget`` bytes is never loaded whole. ``exact`` and
``flat`` stream its shards (memory-mapped) through every query chunk and merge the top-k;
``ivfpq`` holds only the PQ codes. Memory is then about one shard plus a query chunk's
similarity block (exact/flat) or ``N * dim / 16`` bytes of codes (ivfpq).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fastdino_cli.curate.store import FeatureBank
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.probe.knn import topk_neighbours

INDEXES = ("auto", "exact", "flat", "ivfpq")
IVF_THRESHOLD = 200_000
"""Pool size from which ``auto`` uses IVF-PQ (see ``benchmarks/curation.py`` and docs/curate.md:
exact search of the pool against itself costs N^2 dim, about 10 minutes on 2 CPU cores here)."""
RERANK = 4
PQ_SUBDIM = 16
"""Dimensions per PQ sub-quantiser (``dim / 16`` bytes per image): Faiss trains a 256-centroid
k-means per sub-quantiser, about ten times slower below 12 dimensions than at 16 (measured)."""
MIN_IVF_ROWS = 10_000
QUERY_CHUNK = 4096
BLOCK_ELEMENTS = 1 << 25  # similarity block of one (query chunk, bank chunk) product: 128 MiB
INSTALL_HINT = "install the curate extra (pip install 'fastdino[curate]') for Faiss IVF-PQ"


def faiss_module():
    """``faiss`` when installed, else None (every caller has a path without it)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def merge_topk(
    best: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar of two (similarities, ids) candidate lists, per query row."""
    s = np.concatenate([best[0], new[0]], axis=1)
    i = np.concatenate([best[1], new[1]], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _empty(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((q, k), -np.inf, dtype=np.float32), np.full((q, k), -1, dtype=np.int64)


class Searcher:
    """``search(q, k)``: (similarities (Q, k) float32 descending, bank row ids (Q, k) int64); a
    query with fewer than ``k`` candidates has trailing similarities -inf and ids -1."""

    name = "?"

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


Kernel = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def torch_kernel(device: torch.device) -> Kernel:
    """Exact top-k of ``q @ xb.T`` with PyTorch on ``device`` (the last bank block stays there, so
    a bank held in memory is copied to the GPU once, not once per query chunk)."""
    last: list = [None, None]

    def kernel(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(q).to(device)
        if last[0] is not xb:
            last[0], last[1] = xb, torch.from_numpy(xb).to(device)
        bt = last[1]
        chunk = max(1024, BLOCK_ELEMENTS // max(1, len(q)))
        s, i = topk_neighbours(qt, bt, min(k, len(xb)), bank_chunk=chunk)
        return s.float().cpu().numpy(), i.cpu().numpy().astype(np.int64)

    return kernel


def faiss_kernel() -> Kernel:
    faiss = faiss_module()

    def kernel(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, i = faiss.knn(q, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        return s.astype(np.float32), i.astype(np.int64)

    return kernel


class ExactSearcher(Searcher):
    """Exact search, the bank held in memory when it fits ``memory_budget``, else streamed."""

    def __init__(
        self,
        bank: FeatureBank,
        mask: np.ndarray | None,
        kernel: Kernel,
        name: str,
        memory_budget: int,
    ) -> None:
        self.bank, self.mask, self.kernel, self.name = bank, mask, kernel, name
        rows = len(bank) if mask is None else int(mask.sum())
        self.held: list[tuple[np.ndarray, np.ndarray]] | None = None
        if rows * bank.dim * 4 <= memory_budget:
            held = list(bank.chunks(mask))
            if held:
                ids = np.concatenate([i for i, _ in held])
                self.held = [(ids, np.concatenate([f for _, f in held]))]
            else:
                self.held = []

    def _blocks(self):
        return self.held if self.held is not None else self.bank.chunks(self.mask)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, dtype=np.float32)
        out_s, out_i = _empty(len(q), k)
        for ids, feats in self._blocks():
            for lo in range(0, len(q), QUERY_CHUNK):
                s, i = self.kernel(q[lo : lo + QUERY_CHUNK], feats, k)
                best = (out_s[lo : lo + QUERY_CHUNK], out_i[lo : lo + QUERY_CHUNK])
                s_m, i_m = merge_topk(best, (s, ids[i]), k)
                out_s[lo : lo + QUERY_CHUNK], out_i[lo : lo + QUERY_CHUNK] = s_m, i_m
        return out_s, out_i


@dataclass
class IvfPqParams:
    nlist: int
    m: int
    nprobe: int
    train_size: int

    @classmethod
    def for_size(cls, n: int, dim: int) -> IvfPqParams:
        nlist = max(1, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        nlist = min(nlist, max(1, n // 39))  # Faiss wants >= 39 training points per list
        m = next(d for d in range(max(1, dim // PQ_SUBDIM), 0, -1) if dim % d == 0)
        train = min(n, max(40 * nlist, 20_000), 500_000)
        return cls(nlist=nlist, m=m, nprobe=min(nlist, 32), train_size=train)


class IvfPqSearcher(Searcher):
    """Faiss IVF-PQ over the (masked) bank, built shard by shard; exact re-ranking."""

    name = "ivfpq"

    def __init__(self, bank: FeatureBank, mask: np.ndarray | None, seed: int = 0) -> None:
        faiss = faiss_module()
        self.bank = bank
        ids = np.arange(len(bank)) if mask is None else np.nonzero(mask)[0]
        self.params = p = IvfPqParams.for_size(len(ids), bank.dim)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(ids, size=min(p.train_size, len(ids)), replace=False))
        index = faiss.index_factory(bank.dim, f"IVF{p.nlist},PQ{p.m}", faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # Hamming filtering is unused; it costs minutes
        index.train(bank.rows(sample))
        for chunk_ids, feats in bank.chunks(mask):
            index.add_with_ids(feats, chunk_ids)
        index.nprobe = p.nprobe
        self.index = index

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(q, dtype=np.float32)
        out_s, out_i = _empty(len(q), k)
        for lo in range(0, len(q), QUERY_CHUNK):
            qc = q[lo : lo + QUERY_CHUNK]
            _, cand = self.index.search(qc, k * RERANK)
            valid = cand >= 0
            exact = np.full(cand.shape, -np.inf, dtype=np.float32)
            if valid.any():
                feats = self.bank.rows(cand[valid])
                rows = np.nonzero(valid)[0]
                exact[valid] = np.einsum("ij,ij->i", qc[rows], feats)
            cand = np.where(valid, cand, -1)
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            s, i = np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)
            out_s[lo : lo + len(qc), : s.shape[1]] = s
            out_i[lo : lo + len(qc), : i.shape[1]] = i
        return out_s, out_i


def choose_index(
    n: int,
    index: str = "auto",
    device: torch.device | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> str:
    """The index ``index`` means for ``n`` bank rows (``auto``: see the module docstring)."""
    if index not in INDEXES:
        raise ConfigError(f"--index {index!r} is not an index; use one of {', '.join(INDEXES)}")
    has_faiss = faiss_module() is not None
    if index in ("flat", "ivfpq") and not has_faiss:
        raise ConfigError(f"--index {index} needs Faiss: {INSTALL_HINT}, or use --index exact")
    if index != "auto":
        return index
    if has_faiss:
        on_gpu = device is not None and device.type != "cpu"
        return "ivfpq" if n >= IVF_THRESHOLD else ("exact" if on_gpu else "flat")
    if n >= IVF_THRESHOLD:
        log(f"hint: exact search over {n} images is slow; {INSTALL_HINT}")
    return "exact"


def build_searcher(
    bank: FeatureBank,
    mask: np.ndarray | None = None,
    *,
    index: str = "auto",
    device: torch.device | None = None,
    memory_budget: int = 2 << 30,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> Searcher:
    """The searcher ``index`` names over ``bank[mask]`` (``choose_index`` resolves ``auto``)."""
    device = device or torch.device("cpu")
    n = len(bank) if mask is None else int(mask.sum())
    index = choose_index(n, index, device, log)
    if index == "ivfpq":
        if n < MIN_IVF_ROWS:
            index = "flat"  # too few rows to train the quantisers: exact is cheap anyway
        else:
            return IvfPqSearcher(bank, mask, seed=seed)
    if index == "flat":
        return ExactSearcher(bank, mask, faiss_kernel(), "flat", memory_budget)
    return ExactSearcher(bank, mask, torch_kernel(device), "exact", memory_budget)
