"""The DINO / iBOT head against DINOv2's formulas, written out here independently of the product.

Reference (``dinov2/layers/dino_head.py``, ``utils/param_groups.py``, ``train/train.py``)::

    mlp = Linear -> GELU -> ... -> Linear(bottleneck); every mlp Linear trunc_normal(0.02), bias 0
    last_layer = weight_norm(nn.Linear(bottleneck, K, bias=False))   # built AFTER that init
    last_layer.weight_g.fill_(1)                                      # trainable
    forward(x) = last_layer(normalize(mlp(x), eps=1e-12))
    weight = weight_g * weight_v / ||weight_v||  (per row)
    no weight decay: name ends with ".bias" or contains "norm" or "gamma"
    is_last_layer: "last_layer" in name; its lr is 0 for the first freeze_last_layer iterations
    lr(t) = base_lr * sqrt(B / 1024) * (linear warmup, then cosine to min_lr); wd(t) cosine
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdino_cli.config import (
    CurriculumConfig,
    HeadConfig,
    ModelConfig,
    OptimConfig,
    TeacherConfig,
)
from fastdino_cli.model.heads import DinoHead, WeightNormLinear, build_head
from fastdino_cli.model.vit import build_vit
from fastdino_cli.train.schedules import Schedules, apply_schedule, build_param_groups

IN, K, BOTTLENECK, HIDDEN = 24, 40, 8, 16


def reference_head(seed: int, nlayers: int = 3) -> tuple[nn.Sequential, nn.Module]:
    """DINOv2's construction, step by step, with torch's own weight_norm."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(IN, HIDDEN), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(HIDDEN, HIDDEN), nn.GELU()]
    layers.append(nn.Linear(HIDDEN, BOTTLENECK))
    mlp = nn.Sequential(*layers)
    for m in mlp.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0)
    last = torch.nn.utils.parametrizations.weight_norm(nn.Linear(BOTTLENECK, K, bias=False))
    with torch.no_grad():
        last.parametrizations.weight.original0.fill_(1)  # weight_g
    return mlp, last


def test_head_init_and_output_equal_the_reference():
    mlp, last = reference_head(seed=3)
    torch.manual_seed(3)
    head = DinoHead(IN, n_prototypes=K, bottleneck_dim=BOTTLENECK, hidden_dim=HIDDEN)
    # same random stream: MLP trunc_normal, then nn.Linear's default (kaiming-uniform) direction
    for ours, ref in zip(head.mlp.state_dict().values(), mlp.state_dict().values(), strict=True):
        assert torch.equal(ours, ref)
    g_ref = last.parametrizations.weight.original0
    v_ref = last.parametrizations.weight.original1
    assert torch.equal(head.last_layer.weight_v, v_ref)
    assert torch.equal(head.last_layer.weight_g, torch.ones(K, 1))
    bound = 1 / math.sqrt(BOTTLENECK)  # kaiming_uniform(a=sqrt(5)), not trunc_normal(0.02)
    assert float(head.last_layer.weight_v.detach().abs().max()) <= bound
    assert float(head.last_layer.weight_v.detach().std()) > 5 * 0.02  # ~bound / sqrt(3) = 0.20

    # a trained-looking scale: prototypes of different norms
    g = torch.rand(K, 1) * 2 + 0.1
    with torch.no_grad():
        head.last_layer.weight_g.copy_(g)
        g_ref.copy_(g)
    x = torch.randn(5, IN)
    with torch.no_grad():
        expected = last(F.normalize(mlp(x), dim=-1, eps=1e-12))
        # and the formula by hand: (g * v / ||v||) applied to the unit bottleneck vector
        h = F.gelu(x @ mlp[0].weight.T + mlp[0].bias)
        h = F.gelu(h @ mlp[2].weight.T + mlp[2].bias)
        h = h @ mlp[4].weight.T + mlp[4].bias
        h = h / h.norm(dim=-1, keepdim=True)
        w = g * v_ref / v_ref.norm(dim=1, keepdim=True)
        by_hand = h @ w.T
        out = head(x)
    assert out.dtype == torch.float32 and out.shape == (5, K)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-6)
    # the reference's state-dict names and shapes
    sd = head.state_dict()
    assert sd["last_layer.weight_g"].shape == (K, 1)
    assert sd["last_layer.weight_v"].shape == (K, BOTTLENECK)


def test_scale_is_trained_or_frozen_at_one():
    head = build_head(IN, HeadConfig(n_prototypes=K, bottleneck_dim=BOTTLENECK, hidden_dim=HIDDEN))
    head(torch.randn(4, IN)).square().sum().backward()
    assert head.last_layer.weight_g.requires_grad
    assert head.last_layer.weight_g.grad is not None
    assert float(head.last_layer.weight_g.grad.abs().sum()) > 0
    frozen = build_head(
        IN,
        HeadConfig(
            n_prototypes=K, bottleneck_dim=BOTTLENECK, hidden_dim=HIDDEN, norm_last_layer=True
        ),
    )
    assert not frozen.last_layer.weight_g.requires_grad
    with torch.no_grad():
        out = frozen(torch.randn(4, IN))
    assert float(out.abs().max()) <= 1 + 1e-6  # cosines: unit prototypes, unit inputs
    with torch.no_grad():  # and the direction's norm never matters
        before = frozen(torch.ones(2, IN))
        frozen.last_layer.weight_v.mul_(7.0)
        torch.testing.assert_close(frozen(torch.ones(2, IN)), before, rtol=0, atol=1e-6)


def test_prototype_layer_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    head = DinoHead(IN, n_prototypes=K, bottleneck_dim=BOTTLENECK, hidden_dim=HIDDEN)
    x = torch.randn(6, IN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x)
        bottleneck = head.mlp(x)  # the MLP itself follows autocast
    assert bottleneck.dtype == torch.bfloat16
    assert out.dtype == torch.float32
    # exactly the fp32 prototype layer applied to the bf16 MLP output: nothing rounded after it
    with torch.no_grad():
        h = F.normalize(bottleneck.float(), dim=-1, eps=1e-12)
        v, g = head.last_layer.weight_v, head.last_layer.weight_g
        expected = h @ (g * v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # and not the bf16 one, which is off by ~1e-3 (divided by the teacher's 0.04: ~2.5%)
    assert float((out - out.bfloat16().float()).abs().max()) > 1e-4


def test_weight_norm_linear_extra_repr_and_meta_device():
    layer = WeightNormLinear(4, 3, freeze_scale=True)
    assert "scale frozen at 1" in repr(layer)
    with torch.device("meta"):  # the FLOP counter builds heads on meta: no autocast there
        head = DinoHead(8, n_prototypes=5, bottleneck_dim=4, hidden_dim=8)
    assert head(torch.empty(2, 8, device="meta")).shape == (2, 5)


# ---- parameter groups and schedules against the reference's formulas -------------------------


class _Student(nn.Module):
    def __init__(self, norm_last_layer: bool = False) -> None:
        super().__init__()
        self.backbone = build_vit(
            ModelConfig(
                arch="vit_tiny", embed_dim=16, depth=2, num_heads=2, patch_size=4, img_size=8
            )
        )
        kw = {"n_prototypes": 6, "bottleneck_dim": 4, "hidden_dim": 8}
        self.dino_head = DinoHead(16, norm_last_layer=norm_last_layer, **kw)
        self.ibot_head = DinoHead(16, norm_last_layer=norm_last_layer, **kw)


def reference_cosine(base, final, total, warmup=0, freeze=0):
    """DINOv2's CosineScheduler: [0] * freeze, linspace(0, base, warmup), then cosine."""
    iters = np.arange(total - warmup - freeze)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate([np.zeros(freeze), np.linspace(0, base, warmup), cos])


E, EPOCHS, WARMUP, FREEZE, BATCH = 10, 6, 2, 3, 64
OPTIM = OptimConfig(
    epochs=EPOCHS,
    warmup_epochs=WARMUP,
    freeze_last_layer_epochs=FREEZE,
    base_lr=0.004,
    min_lr=1e-6,
    weight_decay=0.04,
    weight_decay_end=0.4,
)


def reference_schedules() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    total = EPOCHS * E
    lr = reference_cosine(0.004 * math.sqrt(BATCH / 1024), 1e-6, total, warmup=WARMUP * E)
    wd = reference_cosine(0.04, 0.4, total)
    last_layer_lr = lr.copy()
    last_layer_lr[: FREEZE * E] = 0  # train.py: freeze_last_layer_epochs * epoch_length
    return lr, wd, last_layer_lr


def test_prototype_scale_param_group_lr_wd_and_freeze_follow_the_reference():
    student = _Student()
    groups = build_param_groups(student, OPTIM, n_blocks=2)
    where = {n: g for g in groups for n in g["names"]}
    for head in ("dino_head", "ibot_head"):
        for p in ("weight_g", "weight_v"):
            group = where[f"{head}.last_layer.{p}"]
            # reference: "last_layer" in name -> last layer; ".bias"/"norm"/"gamma" -> no wd
            assert group["is_last_layer"] and group["wd_mult"] == 1.0 and group["lr_mult"] == 1.0
    opt = torch.optim.AdamW(groups, lr=0.0)
    sched = Schedules(OPTIM, TeacherConfig(), CurriculumConfig(), E, EPOCHS * E, BATCH)
    lr, wd, last_lr = reference_schedules()
    g_group = next(g for g in opt.param_groups if "dino_head.last_layer.weight_g" in g["names"])
    for t in [0, 1, 5, FREEZE * E - 1, FREEZE * E, FREEZE * E + 1, 45, EPOCHS * E - 1]:
        apply_schedule(opt, sched.at(t))
        assert g_group["lr"] == pytest.approx(last_lr[t], rel=1e-9, abs=1e-15), t
        assert g_group["weight_decay"] == pytest.approx(wd[t], rel=1e-9), t
        frozen = t < FREEZE * E
        assert (g_group["lr"] == 0.0) == frozen


def test_lr_warmup_endpoint_follows_the_reference():
    sched = Schedules(OPTIM, TeacherConfig(), CurriculumConfig(), E, EPOCHS * E, BATCH)
    lr, _, _ = reference_schedules()
    got = [sched.at(t).lr for t in range(WARMUP * E)]
    np.testing.assert_allclose(got, lr[: WARMUP * E], rtol=1e-9)


def test_frozen_steps_leave_scale_and_direction_untouched_then_train_them():
    torch.manual_seed(0)
    student = _Student()
    opt = torch.optim.AdamW(build_param_groups(student, OPTIM, n_blocks=2), lr=0.0)
    sched = Schedules(OPTIM, TeacherConfig(), CurriculumConfig(), E, EPOCHS * E, BATCH)
    head = student.dino_head.last_layer
    x = torch.randn(4, 16)

    def step(t: int) -> None:
        apply_schedule(opt, sched.at(t))
        opt.zero_grad()
        student.dino_head(x).logsumexp(-1).sum().backward()
        opt.step()

    g0, v0 = head.weight_g.detach().clone(), head.weight_v.detach().clone()
    mlp0 = student.dino_head.mlp[0].weight.detach().clone()
    step(WARMUP * E)  # past the warmup, still frozen (lr 0 also stops AdamW's decoupled decay)
    assert torch.equal(head.weight_g, g0) and torch.equal(head.weight_v, v0)
    assert not torch.equal(student.dino_head.mlp[0].weight, mlp0)
    step(FREEZE * E)
    assert not torch.equal(head.weight_g, g0) and not torch.equal(head.weight_v, v0)


def test_norm_last_layer_keeps_scale_out_of_the_optimizer():
    student = _Student(norm_last_layer=True)
    names = {n for g in build_param_groups(student, OPTIM, n_blocks=2) for n in g["names"]}
    assert "dino_head.last_layer.weight_v" in names
    assert "dino_head.last_layer.weight_g" not in names
