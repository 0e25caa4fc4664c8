"""Few-shot, per-class, class-subset and refit probes against independent computations.

Each number is recomputed here another way: DINOv2's own few-shot draw (global seed, the
``torch.unique`` class mapping), the brute-force numpy kNN of ``test_probe_knn_linear``, an
autograd + ``torch.optim.SGD`` training loop for the single heads, and per-class accuracies and
confusions counted by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastdino_cli.data.labelled import LabelledFolder
from fastdino_cli.errors import ConfigError, DataError
from fastdino_cli.eval.features import Features, head_input
from fastdino_cli.eval.probe.fewshot import few_shot, few_shot_indices, grid_steps, mean_std
from fastdino_cli.eval.probe.head import score_head, train_head
from fastdino_cli.eval.probe.knn import knn_classify
from fastdino_cli.eval.probe.linear import HeadSpec, linear_probe, subset
from fastdino_cli.eval.probe.perclass import per_class_top1, top_confusions
from fastdino_cli.eval.probe.subsets import relabel, subset_mapping
from tests.probe_helpers import one_thread, synthetic_features  # noqa: F401
from tests.test_probe_knn_linear import brute_force_knn


def dinov2_filter_train(labels: torch.Tensor, n_per_class: int, seed: int) -> torch.Tensor:
    """DINOv2 ``eval/knn.py``: ``create_class_indices_mapping`` + ``filter_train`` (global seed)."""
    unique, inverse = torch.unique(labels, return_inverse=True)
    mapping = {unique[i].item(): (inverse == i).nonzero() for i in range(len(unique))}
    torch.manual_seed(seed)
    final = []
    for k in mapping:
        index = torch.randperm(len(mapping[k]))[:n_per_class]
        final.append(mapping[k][index])
    return torch.cat(final).squeeze()


def test_few_shot_draw_is_dinov2_filter_train_seeded_and_nested():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (200,), generator=g)
    labels[labels == 3] = 4  # class 3 absent: indices follow the classes present
    labels[:2] = 6
    state = torch.random.get_rng_state()
    for seed in (0, 1, 5):
        for shots in (1, 3, 10):
            got = few_shot_indices(labels, shots, seed)
            assert torch.equal(got, dinov2_filter_train(labels, shots, seed))
            assert torch.equal(got, few_shot_indices(labels, shots, seed))  # same seed, same set
    torch.random.set_rng_state(state)
    one, two, five = (few_shot_indices(labels, s, 2) for s in (1, 2, 5))
    assert set(one.tolist()) <= set(two.tolist()) <= set(five.tolist())  # nested per try
    counts = torch.bincount(labels[five], minlength=7).tolist()
    assert counts == [min(5, int((labels == c).sum())) for c in range(7)]
    assert not torch.equal(few_shot_indices(labels, 5, 0), few_shot_indices(labels, 5, 1))


def test_few_shot_draw_takes_every_image_of_a_small_class():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    got = few_shot_indices(labels, 3, 0)
    assert sorted(labels[got].tolist()) == [0, 0, 0, 1, 2, 2]


def autograd_head(feats, spec, *, num_classes, steps, batch_size, seed):
    """The single head trained by autograd + torch.optim.SGD (momentum 0.9), lr set per step to
    lr * batch/256 * (1 + cos(pi t / T)) / 2, init N(0, 0.01) from ``seed``, batches from
    ``seed + 1`` permutations (the grid trainer's documented recipe)."""
    x_all = head_input(feats.cls.float(), feats.patch_mean.float(), spec.n_last_blocks,
                       spec.avgpool)  # fmt: skip
    d = x_all.shape[1]
    w = (torch.randn(1, d, num_classes, generator=torch.Generator().manual_seed(seed)) * 0.01)[0]
    w = w.clone().requires_grad_(True)
    b = torch.zeros(num_classes, requires_grad=True)
    base = spec.lr * batch_size / 256.0
    opt = torch.optim.SGD([w, b], lr=base, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    t, n = 0, len(feats)
    while t < steps:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            if t >= steps:
                break
            idx = perm[start : start + batch_size]
            for group in opt.param_groups:
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * t / steps))
            opt.zero_grad()
            F.cross_entropy(x_all[idx] @ w + b, feats.labels[idx]).backward()
            opt.step()
            t += 1
    return w.detach().T, b.detach()


@pytest.mark.parametrize("steps", [None, 23])
def test_single_head_equals_autograd_sgd_cosine(steps):
    feats = synthetic_features(90, 4, seed=3)
    spec = HeadSpec(2, True, 0.05)
    got_w, got_b = train_head(feats, spec, num_classes=4, epochs=3, batch_size=16, steps=steps,
                              seed=4)  # fmt: skip
    n_steps = steps if steps is not None else 3 * math.ceil(90 / 16)
    want_w, want_b = autograd_head(feats, spec, num_classes=4, steps=n_steps, batch_size=16,
                                   seed=4)  # fmt: skip
    assert got_w.shape == (4, 16 * 2 + 16)
    assert torch.allclose(got_w, want_w, atol=1e-6) and torch.allclose(got_b, want_b, atol=1e-6)
    assert not torch.allclose(want_w, torch.zeros_like(want_w), atol=1e-3)  # it did train


def test_score_head_equals_grid_evaluation_of_the_chosen_head():
    train = synthetic_features(200, 5, seed=0)
    val = synthetic_features(100, 5, seed=0, separable=False)
    lin = linear_probe(train, val, n_last_blocks=(1, 2), epochs=2, batch_size=32)
    s = score_head(lin.weight, lin.bias, lin.spec, val)
    assert (s.top1, s.top5) == pytest.approx((lin.val_top1, lin.val_top5), abs=1e-9)
    assert s.predictions.shape == (100,)


def test_few_shot_numbers_match_independent_computation():
    train = synthetic_features(120, 4, seed=1)
    val = synthetic_features(60, 4, seed=1, separable=False)  # labels random: accuracies vary
    spec = HeadSpec(1, False, 0.1)
    results = few_shot(train, val, shots=[5, 2], tries=3, ks=(3, 20), head=spec, head_steps=7,
                       batch_size=8, seed=10)  # fmt: skip
    assert [r.shots for r in results] == [2, 5]
    for res in results:
        per_try_knn, per_try_lin = [], []
        for t, got in enumerate(res.tries):
            idx = dinov2_filter_train(train.labels, res.shots, 10 + t)
            sub = subset(train, idx)
            assert got.seed == 10 + t and got.num_train == len(idx) == 4 * res.shots
            k_eff = [min(3, len(idx)), min(20, len(idx))]
            assert [r.k for r in got.knn] == [k for k in (3, 20) if k <= len(idx)]
            for r in got.knn:
                want = brute_force_knn(sub.last_cls.numpy(), sub.labels.numpy(),
                                       val.last_cls.numpy(), val.labels.numpy(), r.k,
                                       max(k_eff), 4)  # fmt: skip
                assert (r.top1, r.top5) == pytest.approx(want, abs=1e-9)
            w, b = autograd_head(sub, spec, num_classes=4, steps=7, batch_size=8, seed=10 + t)
            pred = (val.last_cls @ w.T + b).argmax(1)
            assert got.linear_top1 == pytest.approx(
                100 * float((pred == val.labels).float().mean())
            )
            per_try_knn.append(got.knn[0].top1)
            per_try_lin.append(got.linear_top1)
        stats = res.stats()
        k0 = res.tries[0].knn[0].k
        assert stats[f"knn{k0}"] == pytest.approx(
            (np.mean(per_try_knn), np.std(per_try_knn, ddof=1))
        )
        assert stats["linear"] == pytest.approx((np.mean(per_try_lin), np.std(per_try_lin, ddof=1)))
        d = res.to_dict()
        assert d["num_tries"] == 3 and len(d["tries"]) == 3
        assert d["linear"]["top1_mean"] == pytest.approx(np.mean(per_try_lin))
    again = few_shot(train, val, shots=[2], tries=3, ks=(3,), head=spec, head_steps=7,
                     batch_size=8, seed=10)  # fmt: skip
    assert [t.knn[0].top1 for t in again[0].tries] == [t.knn[0].top1 for t in results[0].tries]
    assert grid_steps(70, 2, 32) == 6
    assert mean_std([3.0]) == (3.0, 0.0)


def test_few_shot_rejects_bad_counts():
    f = synthetic_features(20, 2)
    with pytest.raises(ConfigError, match="--shots values must be positive"):
        few_shot(f, f, shots=[0, 1], tries=1, ks=(1,), head=HeadSpec(1, False, 0.1),
                 head_steps=1)  # fmt: skip
    with pytest.raises(ConfigError, match="--tries 0 must be at least 1"):
        few_shot(f, f, shots=[1], tries=0, ks=(1,), head=HeadSpec(1, False, 0.1), head_steps=1)


def test_per_class_and_confusions_by_hand():
    names = ["ant", "bee", "cat", "dog"]
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 1, 1, 0, 0, 2, 1])
    assert per_class_top1(preds, labels, 4) == [25.0, 100.0, 25.0, None]
    got = [(c.true, c.predicted, c.count) for c in top_confusions(preds, labels, names, n=10)]
    # ant->bee 2, cat->ant 2 (ties in (true, predicted) order), then the single ones
    assert got == [("ant", "bee", 2), ("cat", "ant", 2), ("ant", "cat", 1), ("cat", "bee", 1)]
    first = top_confusions(preds, labels, names, n=1)[0]
    assert first.share_of_class == 50.0 and first.cost == 20.0  # 2 of ant's 4; 2 of 10 images
    assert top_confusions(labels, labels, names) == []  # no errors, no pairs


def _one_block(x: torch.Tensor, labels: torch.Tensor, names: list[str]) -> Features:
    return Features(x[:, None, :], torch.zeros_like(x), labels, names)


def test_class_subset_restricts_linear_logits():
    names = ["a", "b", "c"]
    spec = HeadSpec(1, False, 0.1)
    weight, bias = torch.eye(3), torch.zeros(3)  # logits = the features themselves
    x = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.9, 0.1], [0.0, 0.2, 0.1], [0.3, 0.4, 0.2]])
    te = _one_block(x, torch.tensor([2, 0, 2, 0]), names)
    mask = torch.tensor([True, False, True])
    full = score_head(weight, bias, spec, te)
    restricted = score_head(weight, bias, spec, te, class_mask=mask)
    assert full.top1 == 0.0  # class "b" wins everywhere without the restriction
    # restricted argmax over {a, c}: c, a, c, a -> all four right
    assert restricted.predictions.tolist() == [2, 0, 2, 0] and restricted.top1 == 100.0
    assert restricted.top5 == 100.0


def test_class_subset_restricts_knn_votes_to_the_subset():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 6, generator=g)
    ty = torch.randint(0, 5, (60,), generator=g)
    val = torch.randn(25, 6, generator=g)
    allowed = [1, 3, 4]
    vy = torch.tensor(allowed)[torch.randint(0, 3, (25,), generator=g)]
    mask = torch.zeros(5, dtype=torch.bool)
    mask[allowed] = True
    got = knn_classify(train, ty, val, vy, ks=(5, 15), num_classes=5, class_mask=mask,
                       val_chunk=7)  # fmt: skip
    a = train.numpy() / np.linalg.norm(train.numpy(), axis=1, keepdims=True)
    b = val.numpy() / np.linalg.norm(val.numpy(), axis=1, keepdims=True)
    sims = b @ a.T
    for res in got:
        hits = 0
        for i in range(25):
            order = np.argsort(-sims[i], kind="stable")[:15]
            w = np.exp(sims[i, order] / 0.07)
            w = (w / w.sum())[: res.k]
            scores = np.zeros(5)
            np.add.at(scores, ty.numpy()[order[: res.k]], w)
            scores[~mask.numpy()] = -np.inf  # the other classes cannot be predicted
            pred = int(np.argmax(scores))
            assert pred in allowed and pred == int(res.predictions[i])
            hits += pred == int(vy[i])
        assert res.top1 == pytest.approx(100 * hits / 25)


def test_subset_mapping_by_folder_name_and_unknown_class_error(tmp_path):
    train_classes = ["n01", "n02", "n03", "n04"]
    test = LabelledFolder(tmp_path / "r", ["n02", "n04"], [], [])
    to_train, mask = subset_mapping(train_classes, test)
    assert to_train.tolist() == [1, 3] and mask.tolist() == [False, True, False, True]
    feats = _one_block(torch.zeros(3, 2), torch.tensor([0, 1, 1]), ["n02", "n04"])
    assert relabel(feats, to_train, train_classes).labels.tolist() == [1, 3, 3]
    bad = LabelledFolder(tmp_path / "r", ["n02", "zebra"], [], [])
    with pytest.raises(DataError) as err:
        subset_mapping(train_classes, bad)
    msg = str(err.value)
    assert "'zebra' is not among the 4 classes of --train" in msg and str(tmp_path / "r") in msg
    assert "\n" not in msg
    worse = LabelledFolder(tmp_path / "r", ["ant", "n02", "zebra"], [], [])
    with pytest.raises(DataError, match="classes 'ant', 'zebra' are not among the 4 classes"):
        subset_mapping(train_classes, worse)
