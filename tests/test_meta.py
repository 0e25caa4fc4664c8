"""Student/teacher module: init, EMA math, one forward/backward."""

from __future__ import annotations

import pytest
import torch

from fastdino_cli.config import CenteringConfig, DinoConfig, HeadConfig, IbotConfig, ModelConfig
from fastdino_cli.data.masking import MultiCropBatch, stratified_masks
from fastdino_cli.ssl.meta import SSLMetaArch

pytestmark = pytest.mark.usefixtures("one_thread")


HEAD = HeadConfig(n_prototypes=16, bottleneck_dim=8, hidden_dim=16, nlayers=3)


def _meta(separate=False, method="softmax"):
    torch.manual_seed(0)
    return SSLMetaArch(
        model=ModelConfig(
            arch="vit_tiny",
            embed_dim=32,
            depth=2,
            num_heads=2,
            patch_size=8,
            img_size=16,
            drop_path_rate=0.1,
        ),
        dino=DinoConfig(head=HEAD),
        ibot=IbotConfig(head=HEAD, separate_head=separate),
        centering=CenteringConfig(method=method),
    )


def _batch(b=3, n_local=2):
    import numpy as np

    masks = stratified_masks(
        2 * b, (2, 2), mask_probability=0.5, ratio_min_max=(0.1, 0.5), rng=np.random.default_rng(0)
    )
    return MultiCropBatch(
        global_crops=torch.randn(2 * b, 3, 16, 16),
        local_crops=torch.randn(n_local * b, 3, 8, 8),
        masks=masks,
        step=0,
        stage=0,
        noise_sigmas=torch.full((b,), -1.0),
    )


def test_teacher_starts_as_student_frozen_and_in_eval_mode():
    m = _meta(separate=True)
    s, t = m.student.state_dict(), m.teacher.state_dict()
    assert s.keys() == t.keys()
    assert {k.split(".")[0] for k in t} == {"backbone", "dino_head", "ibot_head"}
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in m.teacher.parameters())
    m.train()
    assert m.student.training and not m.teacher.training
    assert m.teacher["backbone"].blocks[0].drop_path == 0.0
    assert m.student["backbone"].blocks[0].drop_path == 0.1


def test_ema_math():
    m = _meta()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(torch.randn_like(p))
    t_before = [p.clone() for p in m.teacher.parameters()]
    s_now = [p.clone() for p in m.student.parameters()]
    m.update_teacher(0.9)
    for tb, sn, ta in zip(t_before, s_now, m.teacher.parameters(), strict=True):
        assert torch.allclose(ta, 0.9 * tb + 0.1 * sn, atol=1e-6)
    m.update_teacher(1.0)  # momentum 1 freezes the teacher
    again = [p.clone() for p in m.teacher.parameters()]
    m.update_teacher(1.0)
    assert all(torch.equal(a, b) for a, b in zip(again, m.teacher.parameters(), strict=True))


@pytest.mark.parametrize("method", ["softmax", "sinkhorn_knopp"])
def test_forward_backward_gives_student_gradients_only(method):
    m = _meta(method=method).train()
    batch = _batch()
    loss, metrics = m(batch, teacher_temp=0.04)
    assert torch.isfinite(loss)
    assert set(metrics) >= {"dino_global", "dino_local", "koleo", "ibot", "teacher_entropy"}
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.student["backbone"].patch_embed.proj.weight.grad is not None
    assert m.student["dino_head"].last_layer.weight_v.grad is not None
    assert m.student["dino_head"].last_layer.weight_g.grad is not None  # trained, as DINOv2
    # mask token only gets gradient through masked globals
    assert m.student["backbone"].mask_token.grad is not None
    # the loss terms are combined with their weights
    total = (
        metrics["dino_global"]
        + metrics["dino_local"]
        + 0.1 * 2 * metrics["koleo"]
        + metrics["ibot"]
    )
    assert float(loss.detach()) == pytest.approx(float(total), rel=1e-5)
    if method == "softmax":
        assert float(m.dino_loss.center.center.abs().sum()) > 0  # the centre moved
    sd = m.loss_state_dict()
    m2 = _meta(method=method)
    m2.load_loss_state_dict(sd)
    assert torch.equal(m2.loss_state_dict()["dino_center"], sd["dino_center"])


def test_no_local_crops_and_no_masks():
    m = _meta().train()
    b = _batch(n_local=0)
    # a batch without any masked patch (its mask positions are derived at construction)
    b = MultiCropBatch(b.global_crops, None, torch.zeros_like(b.masks), 0, 0, b.noise_sigmas)
    assert b.n_masked == 0 and b.mask_weights.shape == (0,)
    loss, metrics = m(b, teacher_temp=0.04)
    assert (
        torch.isfinite(loss)
        and float(metrics["ibot"]) == 0.0
        and float(metrics["dino_local"]) == 0.0
    )
