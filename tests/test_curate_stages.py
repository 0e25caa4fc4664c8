"""Each curation stage on hand-built embeddings: search, dedup, k-means, retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from curate_helpers import clustered, single_threaded, unit, write_bank

from fastdino_cli.curate import index as index_mod
from fastdino_cli.curate.dedup import (
    components_above,
    nearest_reference,
    pool_neighbours,
    read_neighbours,
)
from fastdino_cli.curate.index import IvfPqSearcher, build_searcher, choose_index, merge_topk
from fastdino_cli.curate.kmeans import assign, train_centroids
from fastdino_cli.curate.retrieve import (
    CLUSTER,
    SAMPLE,
    Candidates,
    cluster_based,
    combine,
    sample_based,
)
from fastdino_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)
needs_faiss = pytest.mark.skipif(index_mod.faiss_module() is None, reason="faiss not installed")
BACKENDS = ["exact", pytest.param("flat", marks=needs_faiss)]


def brute_topk(q, x, k):
    sims = q @ x.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), order


# ------------------------------------------------------------------------------------------
# search
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", [0, 1 << 30], ids=["streamed", "in-memory"])
def test_exact_search_matches_brute_force_over_shards(tmp_path, backend, budget):
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((53, 16)))
    bank = write_bank(tmp_path / "b", x, shard_size=7)  # 8 shards, the last one short
    q = unit(rng.standard_normal((11, 16)))
    s, i = build_searcher(bank, index=backend, memory_budget=budget).search(q, 5)
    bs, bi = brute_topk(q, x, 5)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(s, bs, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_search_only_returns_kept_rows_and_pads_when_short(tmp_path, backend):
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((20, 8)))
    bank = write_bank(tmp_path / "b", x, shard_size=6)
    mask = np.zeros(20, bool)
    mask[[2, 7, 13]] = True
    s, i = build_searcher(bank, mask, index=backend).search(x[:4], 5)
    assert set(i[:, :3].ravel()) <= {2, 7, 13}
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    np.testing.assert_array_equal(i[:, :3], np.array([2, 7, 13])[brute_topk(x[:4], x[mask], 3)[1]])


def test_merge_topk_keeps_the_best_of_both_lists():
    a = (np.array([[0.9, 0.5]]), np.array([[1, 2]]))
    b = (np.array([[0.7, 0.95]]), np.array([[3, 4]]))
    s, i = merge_topk(a, b, 3)
    assert i.tolist() == [[4, 1, 3]] and s.tolist() == [[0.95, 0.9, 0.7]]


@needs_faiss
def test_ivfpq_finds_near_copies_and_reports_exact_cosines(tmp_path):
    x, _ = clustered(200, 60, dim=32, spread=0.3, seed=2)  # 12000 rows: above MIN_IVF_ROWS
    rng = np.random.default_rng(2)
    originals = rng.choice(len(x), 40, replace=False)
    copies = np.arange(40) * 300 + 7  # rows overwritten with near-copies (cosine ~0.999)
    copies = np.setdiff1d(copies, originals)[:30]
    originals = originals[: len(copies)]
    x[copies] = unit(x[originals] + 0.01 * rng.standard_normal((len(copies), 32)))
    bank = write_bank(tmp_path / "b", x, shard_size=4000)
    searcher = build_searcher(bank, index="ivfpq")
    assert isinstance(searcher, IvfPqSearcher) and searcher.params.m == 2  # 32 dims / 16
    s, i = searcher.search(x[originals], 2)
    assert (i[:, 0] == originals).all() and (i[:, 1] == copies).all()  # self, then the copy
    exact = np.einsum("ij,ikj->ik", x[originals], x[i])  # re-ranked: cosines, not PQ estimates
    np.testing.assert_allclose(s, exact, atol=1e-5)
    q = x[::400]
    _, i5 = searcher.search(q, 5)
    _, bi = brute_topk(q, x, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(i5, bi, strict=True)])
    assert recall >= 0.4  # 2 bytes per image in 32 dimensions: the candidates are coarse


def test_auto_index_choice_follows_size_device_and_faiss(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    big = index_mod.IVF_THRESHOLD
    if index_mod.faiss_module() is not None:
        assert choose_index(100, "auto", cpu) == "flat"
        assert choose_index(100, "auto", cuda) == "exact"  # PyTorch on the GPU
        assert choose_index(big, "auto", cpu) == "ivfpq"
    hints = []
    monkeypatch.setattr(index_mod, "faiss_module", lambda: None)
    assert choose_index(100, "auto", cpu, hints.append) == "exact" and not hints
    assert choose_index(big, "auto", cpu, hints.append) == "exact"
    assert len(hints) == 1 and "pip install 'fastdino[curate]'" in hints[0]
    with pytest.raises(ConfigError, match="needs Faiss"):
        choose_index(10, "ivfpq", cpu)
    with pytest.raises(ConfigError, match="not an index"):
        choose_index(10, "hnsw", cpu)


# ------------------------------------------------------------------------------------------
# deduplicate
# ------------------------------------------------------------------------------------------


def test_near_duplicates_form_components_and_the_first_is_kept(tmp_path):
    rng = np.random.default_rng(3)
    x = unit(rng.standard_normal((30, 32)))  # random directions: pairwise cosine < 0.7
    x[10] = unit(x[3] + 0.02 * rng.standard_normal(32))  # copy of 3
    x[20] = unit(x[10] + 0.02 * rng.standard_normal(32))  # copy of the copy: a chain
    x[25] = unit(x[7] + 0.02 * rng.standard_normal(32))  # copy of 7
    bank = write_bank(tmp_path / "pool", x, shard_size=8)
    pool_neighbours(bank, tmp_path / "nb", 4, lambda: build_searcher(bank, index="exact"))
    sims, ids = read_neighbours(bank, tmp_path / "nb")
    assert sims.shape == ids.shape == (30, 4)
    assert not (ids == np.arange(30)[:, None]).any()  # nobody is its own neighbour
    dup = components_above(sims, ids, 0.95)
    assert sorted(np.nonzero(~dup.keep)[0]) == [10, 20, 25]
    assert dup.kept_for[[10, 20, 25]].tolist() == [3, 3, 7]
    assert dup.kept_for[[3, 7, 0]].tolist() == [3, 7, 0]
    # the 1-NN cosine the histogram shows is the best other row
    np.testing.assert_allclose(dup.edge_sim[10], max(x[10] @ x[3], x[10] @ x[20]), atol=1e-5)
    assert components_above(sims, ids, 1.01).keep.all()


def test_duplicates_of_reference_images_are_found(tmp_path):
    rng = np.random.default_rng(4)
    pool = unit(rng.standard_normal((12, 16)))
    ref = unit(rng.standard_normal((5, 16)))
    pool[6] = unit(ref[2] + 0.01 * rng.standard_normal(16))
    pb = write_bank(tmp_path / "pool", pool, shard_size=5)
    rb = write_bank(tmp_path / "ref", ref)
    m = nearest_reference(pb, build_searcher(rb, index="exact"))
    assert np.nonzero(m.sims >= 0.95)[0].tolist() == [6] and m.ids[6] == 2
    np.testing.assert_allclose(m.sims, (pool @ ref.T).max(1), atol=1e-5)
    masked = nearest_reference(pb, build_searcher(rb, index="exact"), np.arange(12) < 6)
    assert np.isneginf(masked.sims[6:]).all() and np.isfinite(masked.sims[:6]).all()


# ------------------------------------------------------------------------------------------
# k-means and retrieval
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_faiss", [False, pytest.param(True, marks=needs_faiss)])
def test_kmeans_recovers_separable_clusters(tmp_path, use_faiss):
    x, truth = clustered(40, 5, dim=16, spread=0.05, seed=5)
    centroids = train_centroids(x, 5, seed=0, use_faiss=use_faiss)
    assert centroids.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    bank = write_bank(tmp_path / "pool", x, shard_size=33)
    rows, cluster, sims = assign(bank, centroids)
    assert rows.tolist() == list(range(200))
    # a bijection between found and true clusters: every cluster is pure and complete
    pairs = set(zip(truth.tolist(), cluster.tolist(), strict=True))
    assert len(pairs) == 5 and len({c for _, c in pairs}) == 5
    assert (sims > 0.9).all()


def test_sample_based_retrieval_returns_the_known_neighbours_above_the_floor(tmp_path):
    rng = np.random.default_rng(6)
    x = unit(rng.standard_normal((40, 16)))
    bank = write_bank(tmp_path / "pool", x, shard_size=9)
    q = unit(x[[5, 30]] + 0.3 * rng.standard_normal((2, 16)))
    got, top_s, top_i = sample_based(q, build_searcher(bank, index="exact"), 3, -1.0)
    _, expect = brute_topk(q, x, 3)
    assert sorted(zip(got.query.tolist(), got.pool.tolist(), strict=True)) == sorted(
        (qi, int(p)) for qi in range(2) for p in expect[qi]
    )
    assert top_i.shape == (2, 8) and top_i[0, 0] == 5 and top_i[1, 0] == 30
    floor = float(top_s[0, 1] + 1e-4)  # only query 0's best neighbour and query 1's above it
    got, _, _ = sample_based(q, build_searcher(bank, index="exact"), 3, floor)
    assert (got.sim >= floor).all() and 5 in got.pool


def test_cluster_based_retrieval_takes_the_query_clusters_up_to_a_cap(tmp_path):
    x, truth = clustered(30, 4, dim=16, spread=0.05, seed=7)
    bank = write_bank(tmp_path / "pool", x, shard_size=16)
    rows, cluster = np.arange(120), truth  # the clustering, given
    q = unit(x[[0, 1, 35]] + 0.01)  # two queries in cluster 0, one in cluster 1
    q_cluster = np.array([0, 0, 1])
    got = cluster_based(bank, rows, cluster, q, q_cluster, 1000, -1.0)
    assert sorted(got.pool.tolist()) == list(range(60)) and got.via == CLUSTER
    # credited to the most similar query of the member's cluster
    sims = x[got.pool] @ q.T
    sims[got.pool < 30, 2] = sims[got.pool >= 30, :2] = -np.inf
    np.testing.assert_array_equal(got.query, sims.argmax(1))
    capped = cluster_based(bank, rows, cluster, q, q_cluster, 7, -1.0, seed=3)
    assert (np.bincount(truth[capped.pool], minlength=4) == [7, 7, 0, 0]).all()
    again = cluster_based(bank, rows, cluster, q, q_cluster, 7, -1.0, seed=3)
    np.testing.assert_array_equal(capped.pool, again.pool)  # seeded
    none = cluster_based(bank, rows, cluster, q, q_cluster, 1000, 1.01)
    assert len(none.pool) == 0


def test_combine_keeps_the_best_credit_and_ors_the_methods():
    a = Candidates(np.array([4, 2, 4]), np.array([0, 1, 1]), np.array([0.6, 0.9, 0.8]), SAMPLE)
    b = Candidates(np.array([2, 9]), np.array([0, 0]), np.array([0.95, 0.5]), CLUSTER)
    r = combine(a, b)
    assert r.rows.tolist() == [2, 4, 9]
    assert r.via.tolist() == [SAMPLE | CLUSTER, SAMPLE, CLUSTER]
    assert r.query.tolist() == [0, 1, 0]
    np.testing.assert_allclose(r.sim, [0.95, 0.8, 0.5])
    assert r.counts_per_class(np.array([0, 1]), 3).tolist() == [2, 1, 0]
    assert len(combine(Candidates.empty(SAMPLE)).rows) == 0
