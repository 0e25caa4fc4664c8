"""DINO / iBOT / KoLeo / centering against independent loop implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastdino_cli.config import HeadConfig
from fastdino_cli.model.heads import DinoHead, build_head
from fastdino_cli.ssl.losses import (
    DinoClsLoss,
    IbotPatchLoss,
    SoftmaxCenter,
    koleo_loss,
    sinkhorn_knopp,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _ce(t, s, temp):
    # one row, written out without any vectorisation tricks
    logp = [
        x - math.log(sum(math.exp(v) for v in (s / temp).tolist())) for x in (s / temp).tolist()
    ]
    return -sum(a * b for a, b in zip(t.tolist(), logp, strict=True))


def test_dino_loss_matches_pair_loop():
    torch.manual_seed(0)
    b, k, n_local = 3, 7, 2
    s_glob = torch.randn(2 * b, k)
    s_loc = torch.randn(n_local * b, k)
    t = torch.softmax(torch.randn(2 * b, k), -1)
    g, loc = DinoClsLoss(k, student_temp=0.1)(s_glob, s_loc, t)
    # views: 0, 1 global; 2.. local. teacher views 0, 1. all pairs except same view.
    views = [s_glob[:b], s_glob[b:]] + [s_loc[i * b : (i + 1) * b] for i in range(n_local)]
    teach = [t[:b], t[b:]]
    total, pairs = 0.0, 0
    for vi, sv in enumerate(views):
        for ti, tv in enumerate(teach):
            if vi == ti:
                continue
            total += sum(_ce(tv[i], sv[i], 0.1) for i in range(b)) / b
            pairs += 1
    assert pairs == 2 + 2 * n_local
    assert float(g + loc) == pytest.approx(total / pairs, rel=1e-5)


def test_dino_loss_without_local_crops_divides_by_three_as_the_reference():
    """DINOv2: n_local_terms = max(n_local * 2, 1), n_global_terms = 2, and the summed global
    CE (both swapped pairs) is divided by their sum: 3 without local crops, not 2."""
    # K = 2, one image; student logits s, teacher targets t (rows: crop 1, crop 2)
    s = torch.tensor([[0.0, 0.1], [0.2, 0.0]])
    t = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    g, loc = DinoClsLoss(2, student_temp=0.1)(s, None, t)
    # crop 1 vs teacher crop 2: log_softmax([0, 1]) = [-1.3132617, -0.3132617]
    # crop 2 vs teacher crop 1: log_softmax([2, 0]) = [-0.1269280, -2.1269280]
    ce_12 = 0.5 * 1.3132617 + 0.5 * 0.3132617  # 0.8132617
    ce_21 = 0.75 * 0.1269280 + 0.25 * 2.1269280  # 0.6269280
    assert float(loc) == 0.0
    assert float(g) == pytest.approx((ce_12 + ce_21) / 3, rel=1e-6)  # 0.4800632
    # with local crops the normaliser is 2 + 2 * n_local, as before
    g1, loc1 = DinoClsLoss(2, student_temp=0.1)(s, s[:1], t)
    assert float(g1) == pytest.approx((ce_12 + ce_21) / 4, rel=1e-6)


def test_dino_loss_at_uniform_outputs_is_ln_k():
    k, b = 64, 4
    s = torch.zeros(2 * b, k)
    t = torch.full((2 * b, k), 1.0 / k)
    g, loc = DinoClsLoss(k)(s, torch.zeros(4 * b, k), t)
    assert float(g + loc) == pytest.approx(math.log(k), rel=1e-6)


def test_softmax_center_timing_and_momentum():
    c = SoftmaxCenter((1, 3), momentum=0.9)
    x1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    p1 = c.targets(x1, 1.0)
    # first call uses the zero centre, then the centre moves by 0.1 * batch mean
    assert torch.allclose(p1, torch.softmax(x1, -1))
    assert torch.allclose(c.center, 0.1 * x1.mean(0, keepdim=True))
    x2 = torch.tensor([[0.0, 0.0, 6.0]])
    p2 = c.targets(x2, 0.5)
    expected_center = 0.1 * x1.mean(0, keepdim=True)
    assert torch.allclose(p2, torch.softmax((x2 - expected_center) / 0.5, -1))
    assert torch.allclose(c.center, 0.9 * expected_center + 0.1 * x2)
    sd = c.state_dict()
    c2 = SoftmaxCenter((1, 3))
    c2.load_state_dict(sd)
    assert torch.equal(c2.center, c.center)


def test_sinkhorn_rows_and_columns_single_process():
    torch.manual_seed(0)
    b, k = 16, 8
    logits = torch.randn(b, k)
    q = sinkhorn_knopp(logits, 0.5, n_iterations=3)
    assert q.shape == (b, k)
    assert torch.allclose(q.sum(1), torch.ones(b), atol=1e-5)  # each sample: a distribution
    # prototype usage is pulled towards uniform (B / K each) compared with a plain softmax
    plain = torch.softmax(logits / 0.5, -1).sum(0)
    assert (q.sum(0) - b / k).abs().max() < 0.5 * (plain - b / k).abs().max()
    # independent loop implementation of the same 3 iterations
    qq = torch.exp((logits / 0.5).double()).t()
    qq /= qq.sum()
    for _ in range(3):
        for r in range(k):
            qq[r] /= qq[r].sum() * k
        for c in range(b):
            qq[:, c] /= qq[:, c].sum() * b
    assert torch.allclose(q.double(), (qq * b).t(), rtol=1e-4)


def test_ibot_loss_per_image_weights_and_mean_over_all_crops():
    torch.manual_seed(0)
    n_img, n_tok, k = 4, 5, 6
    masks = torch.zeros(n_img, n_tok, dtype=torch.bool)
    masks[0, :2] = True
    masks[2, 1:5] = True  # images 1 and 3 unmasked
    from fastdino_cli.data.masking import token_weights

    m = int(masks.sum())
    s, t = torch.randn(m, k), torch.softmax(torch.randn(m, k), -1)
    loss = IbotPatchLoss(k)(s, t, token_weights(masks), n_img)
    # loop: per image mean CE over its masked tokens, then mean over ALL images
    per_image, row = [], 0
    for i in range(n_img):
        cnt = int(masks[i].sum())
        ces = [_ce(t[row + j], s[row + j], 0.1) for j in range(cnt)]
        row += cnt
        per_image.append(sum(ces) / cnt if cnt else 0.0)
    assert float(loss) == pytest.approx(sum(per_image) / n_img, rel=1e-5)


def test_ibot_sinkhorn_single_process_uses_masked_count():
    loss = IbotPatchLoss(5, centering="sinkhorn_knopp")
    q = loss.teacher_targets(torch.randn(11, 5), 0.07)
    assert torch.allclose(q.sum(1), torch.ones(11), atol=1e-5)


def test_koleo_matches_loop_and_is_finite_for_duplicates():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    xn = F.normalize(x, dim=-1, eps=1e-8)
    total = 0.0
    for i in range(6):
        best, dist = -2.0, 0.0
        for j in range(6):
            if i != j and float(xn[i] @ xn[j]) > best:
                best = float(xn[i] @ xn[j])
                dist = float(((xn[i] - xn[j] + 1e-8) ** 2).sum().sqrt())
        total += -math.log(dist + 1e-8)
    assert float(koleo_loss(x)) == pytest.approx(total / 6, rel=1e-4)
    dup = torch.ones(4, 8, dtype=torch.float16)
    assert torch.isfinite(koleo_loss(dup))
    assert koleo_loss(dup).dtype == torch.float32
    assert float(koleo_loss(torch.randn(1, 8))) == 0.0


def test_dino_head_shapes_normalised_prototypes_and_weights_only_keys(tmp_path):
    head = build_head(32, HeadConfig(n_prototypes=50, bottleneck_dim=8, hidden_dim=16, nlayers=3))
    with torch.no_grad():
        out = head(torch.randn(5, 32))
    assert out.shape == (5, 50)
    # cosine logits at init: |logit| <= 1 since both sides are unit vectors (g starts at 1)
    assert float(out.abs().max()) <= 1.0 + 1e-5
    # scaling the prototype directions does not change the output (weight norm)
    with torch.no_grad():
        before = head(torch.ones(2, 32))
        head.last_layer.weight_v.mul_(7.0)
        assert torch.allclose(head(torch.ones(2, 32)), before, atol=1e-6)
    path = tmp_path / "h.pt"
    torch.save(head.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    assert sorted(sd) == [
        "last_layer.weight_g",
        "last_layer.weight_v",
        "mlp.0.bias",
        "mlp.0.weight",
        "mlp.2.bias",
        "mlp.2.weight",
        "mlp.4.bias",
        "mlp.4.weight",
    ]
    assert len(DinoHead(8, n_prototypes=3, nlayers=1).mlp) == 1


def test_sinkhorn_survives_large_logits():
    q = sinkhorn_knopp(torch.randn(8, 4) * 30 + 60, 1.0)  # exp() would overflow unshifted
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)
