"""kNN and the linear grid on synthetic features: exactness, separability, chance, selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import Features
from fastdino_cli.eval.probe import linear as linear_mod
from fastdino_cli.eval.probe.knn import knn_classify
from fastdino_cli.eval.probe.linear import (
    DEFAULT_LRS,
    evaluate_grid,
    fit_and_select,
    linear_probe,
    stratified_split,
)
from tests.probe_helpers import one_thread, synthetic_features  # noqa: F401


def brute_force_knn(train, train_y, val, val_y, k, k_max, num_classes, t=0.07):
    """Straight numpy: all similarities, full sort, softmax over the top ``k_max``, vote sums
    of the first ``k``; top-5 = positive score with fewer than 5 classes strictly above."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = val / np.linalg.norm(val, axis=1, keepdims=True)
    sims = b @ a.T
    top1 = top5 = 0
    for i in range(len(b)):
        order = np.argsort(-sims[i], kind="stable")[:k_max]
        w = np.exp(sims[i, order] / t)
        w = (w / w.sum())[:k]
        scores = np.zeros(num_classes)
        np.add.at(scores, train_y[order[:k]], w)
        top1 += int(np.argmax(scores) == val_y[i])
        own = scores[val_y[i]]
        top5 += int(own > 0 and (scores > own).sum() < 5)
    return 100 * top1 / len(b), 100 * top5 / len(b)


def test_knn_matches_brute_force_with_chunking():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 12, generator=g)
    val = torch.randn(70, 12, generator=g)
    ty = torch.randint(0, 9, (300,), generator=g)
    vy = torch.randint(0, 9, (70,), generator=g)
    # small chunks so both the val loop and the merge of bank shards run
    got = knn_classify(
        train, ty, val, vy, ks=(1, 5, 20), num_classes=9, val_chunk=16, bank_chunk=37
    )
    assert [r.k for r in got] == [1, 5, 20]
    for res in got:
        want = brute_force_knn(train.numpy(), ty.numpy(), val.numpy(), vy.numpy(), res.k, 20, 9)
        assert (res.top1, res.top5) == pytest.approx(want, abs=1e-9)
    # accuracy is well above zero and not trivially 100: the comparison is not vacuous
    assert 0 < got[-1].top5 < 100


def test_knn_k_is_capped_at_train_size():
    f = synthetic_features(20, 2)
    res = knn_classify(f.last_cls, f.labels, f.last_cls, f.labels, ks=(10, 200), num_classes=2)
    assert [r.k for r in res] == [10, 20]


def test_knn_and_linear_solve_separable_features():
    train = synthetic_features(400, 5, seed=0)
    val = _same_centres(train, n=200, seed=5)
    knn = knn_classify(train.last_cls, train.labels, val.last_cls, val.labels, ks=(10,))
    assert knn[0].top1 > 98
    res = linear_probe(train, val, n_last_blocks=(1,), avgpool=(False,), epochs=20, batch_size=64)
    assert res.val_top1 > 98 and res.holdout_top1 > 98


def _same_centres(train: Features, n: int, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(train.class_names)
    centres = torch.stack(
        [train.last_cls[train.labels == c].mean(0) for c in range(len(train.class_names))]
    )
    x = centres[labels] + torch.randn(n, centres.shape[1], generator=g) * 0.5
    cls = torch.stack([torch.randn(n, centres.shape[1], generator=g), x], dim=1)
    return Features(cls, torch.randn(n, centres.shape[1], generator=g), labels, train.class_names)


def test_random_labels_give_chance():
    train = synthetic_features(600, 4, separable=False, seed=0)
    val = synthetic_features(600, 4, separable=False, seed=1)
    knn = knn_classify(train.last_cls, train.labels, val.last_cls, val.labels, ks=(20,))
    assert 15 < knn[0].top1 < 35
    res = linear_probe(train, val, n_last_blocks=(1,), avgpool=(False,), epochs=5, batch_size=64)
    assert 15 < res.val_top1 < 35


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 2)
    fit, hold = stratified_split(labels, 0.2, seed=3)
    assert set(fit.tolist()).isdisjoint(hold.tolist())
    assert sorted(fit.tolist() + hold.tolist()) == list(range(82))
    counts = torch.bincount(labels[hold], minlength=3).tolist()
    assert counts == [10, 6, 1]
    fit2, hold2 = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(hold, hold2)
    with pytest.raises(DataError, match="--holdout 0"):
        stratified_split(labels, 0.0)


def test_selection_never_sees_val(monkeypatch):
    """By construction (fit_and_select has no val argument) and by a spy on evaluate_grid."""
    train = synthetic_features(200, 4, seed=0)
    val = _same_centres(train, n=80, seed=9)
    seen = []
    real = linear_mod.evaluate_grid

    def spy(grid, feats, *a, **k):
        seen.append(feats)
        return real(grid, feats, *a, **k)

    monkeypatch.setattr(linear_mod, "evaluate_grid", spy)
    res = linear_probe(train, val, n_last_blocks=(1,), epochs=3, batch_size=32, lrs=(1e-3, 0.1))
    assert len(seen) == 2 and seen[1] is val  # held-out split first, val once at the end
    assert seen[0] is not val and len(seen[0]) == res.num_holdout
    # destroying val labels cannot change which head is chosen
    shuffled = Features(val.cls, val.patch_mean, val.labels.flip(0), val.class_names)
    res2 = linear_probe(
        train, shuffled, n_last_blocks=(1,), epochs=3, batch_size=32, lrs=(1e-3, 0.1)
    )
    assert res2.spec == res.spec and torch.equal(res2.weight, res.weight)


def test_grid_covers_reference_recipes_and_lrs():
    train = synthetic_features(80, 4, seed=0)
    grid, chosen, hold, n_fit, n_hold = fit_and_select(
        train, recipes=[(1, False), (1, True), (2, False), (2, True)], epochs=1, batch_size=16
    )
    assert len(grid.specs) == 4 * 13 == len(hold) and 0 <= chosen < 52
    assert grid.lrs == list(DEFAULT_LRS) and n_fit + n_hold == 80
    top1, top5 = evaluate_grid(grid, train)
    assert top1.shape == (52,) and bool((top5 >= top1).all())
    w, b = grid.head(chosen)
    assert w.shape[0] == 4 and b.shape == (4,)
