"""Schedules, restarts, curriculum stage lookup and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from fastdino_cli.config import (
    CropsConfig,
    CurriculumConfig,
    ModelConfig,
    OptimConfig,
    StageConfig,
    TeacherConfig,
    resolve_config,
)
from fastdino_cli.curriculum import (
    is_restart_step,
    segment_at_step,
    segments,
    stage_at_step,
)
from fastdino_cli.model.heads import DinoHead
from fastdino_cli.model.vit import build_vit
from fastdino_cli.train.schedules import (
    Schedules,
    apply_schedule,
    build_param_groups,
    clip_grad_norms,
    layer_id,
)

pytestmark = pytest.mark.usefixtures("one_thread")


TWO_STAGES = CurriculumConfig(
    stages=[
        StageConfig(
            name="low", end=0.75, global_crops_size=112, local_crops_size=48, schedule_epochs=200
        ),
        StageConfig(
            name="high",
            end=1.0,
            global_crops_size=224,
            local_crops_size=96,
            restart=True,
            warmup_epochs=5,
        ),
    ]
)


def test_stage_lookup_at_boundaries():
    # stage i covers steps [round(end_{i-1} T), round(end_i T)): end 0.75 of 10000 is step 7500
    assert stage_at_step(TWO_STAGES, 0, 10_000).name == "low"
    assert stage_at_step(TWO_STAGES, 7499, 10_000).name == "low"
    assert stage_at_step(TWO_STAGES, 7500, 10_000).name == "high"
    assert stage_at_step(TWO_STAGES, 9999, 10_000).name == "high"
    assert stage_at_step(TWO_STAGES, 10_000, 10_000).name == "high"  # past the end: the last
    crops = CropsConfig(global_crops_size=64, local_crops_size=32)
    st = stage_at_step(CurriculumConfig(), 3, 10, crops)
    assert (st.global_crops_size, st.local_crops_size) == (64, 32)
    # 200 epochs x 10 iterations: stage 2 starts at step 1500
    assert stage_at_step(TWO_STAGES, 1499, 2000).index == 0
    assert stage_at_step(TWO_STAGES, 1500, 2000).index == 1
    assert stage_at_step(TWO_STAGES, 1999, 2000).global_crops_size == 224
    assert not is_restart_step(TWO_STAGES, 1499, 2000) and is_restart_step(TWO_STAGES, 1500, 2000)
    assert not is_restart_step(TWO_STAGES, 0, 2000)


def test_segments_follow_restarts_and_schedule_epochs():
    segs = segments(TWO_STAGES, total_steps=2000, epoch_length=10)
    assert [(s.start_step, s.length, s.warmup_epochs) for s in segs] == [
        (0, 2000, None),  # stage 1: a 200-epoch schedule, cut at 75%
        (1500, 500, 5),
    ]
    assert segment_at_step(TWO_STAGES, 1499, 2000, 10).start_step == 0
    continuous = CurriculumConfig(stages=[StageConfig(end=0.5), StageConfig(end=1.0)])
    assert len(segments(continuous, 100, 1)) == 1


def _schedules(curriculum=TWO_STAGES, total=2000):
    return Schedules(
        optim=OptimConfig(
            epochs=200,
            warmup_epochs=10,
            base_lr=0.004,
            lr_scaling_batch=1024,
            min_lr=1e-6,
            weight_decay=0.04,
            weight_decay_end=0.4,
            freeze_last_layer_epochs=1,
        ),
        teacher=TeacherConfig(
            momentum=0.992, final_momentum=1.0, warmup_temp=0.04, temp=0.07, warmup_temp_epochs=30
        ),
        curriculum=curriculum,
        epoch_length=10,
        total_steps=total,
        global_batch=256,
    )


def test_schedule_values_at_chosen_steps():
    s = _schedules()
    peak = 0.004 * math.sqrt(256 / 1024)
    v0 = s.at(0)
    assert v0.lr == 0.0 and v0.last_layer_lr == 0.0
    assert v0.weight_decay == pytest.approx(0.04) and v0.momentum == pytest.approx(0.992)
    assert v0.teacher_temp == pytest.approx(0.04)
    assert s.at(50).lr == pytest.approx(peak * 50 / 99)  # np.linspace(0, peak, 100)[50]
    assert s.at(99).lr == pytest.approx(peak)  # the warmup's last iteration reaches the peak
    assert s.at(5).last_layer_lr == 0.0 and s.at(10).last_layer_lr == s.at(10).lr
    assert s.at(100).lr == pytest.approx(peak)
    assert s.at(150).teacher_temp == pytest.approx(0.04 + 0.03 * 150 / 300)
    assert s.at(300).teacher_temp == pytest.approx(0.07)
    # stage 1 is cut at 75% of a 2000-step schedule: mid-cosine values just before the switch
    t = 1499
    frac = (t - 100) / 1900
    assert s.at(t).lr == pytest.approx(1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi * frac)))
    assert s.at(t).momentum == pytest.approx(1 - 0.008 * 0.5 * (1 + math.cos(math.pi * t / 2000)))
    assert s.at(t).weight_decay == pytest.approx(
        0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * t / 2000))
    )


def test_restart_resets_every_schedule():
    s = _schedules()
    r = s.at(1500)
    assert r.segment_step == 0
    assert r.lr == 0.0 and r.last_layer_lr == 0.0
    assert r.momentum == pytest.approx(0.992) and r.weight_decay == pytest.approx(0.04)
    assert r.teacher_temp == pytest.approx(0.04)
    peak = 0.004 * math.sqrt(256 / 1024)
    assert s.at(1525).lr == pytest.approx(peak * 25 / 49)  # stage warmup: 5 epochs
    assert s.at(1550).lr == pytest.approx(peak)
    assert s.at(1999).lr < 1e-5 and s.at(1999).momentum > 0.9999


class _Student(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = build_vit(
            ModelConfig(
                arch="vit_tiny", embed_dim=16, depth=3, num_heads=2, patch_size=4, img_size=8
            )
        )
        self.dino_head = DinoHead(16, n_prototypes=5, bottleneck_dim=4, hidden_dim=8)


def test_param_group_membership():
    student = _Student()
    optim = OptimConfig(layerwise_decay=0.5, patch_embed_lr_mult=0.2)
    groups = build_param_groups(student, optim, n_blocks=3)
    where = {n: g for g in groups for n in g["names"]}
    assert len(where) == sum(1 for _ in student.parameters())
    assert where["backbone.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.5**4 * 0.2)
    assert where["backbone.pos_embed"]["lr_mult"] == pytest.approx(0.5**4)
    assert where["backbone.pos_embed"]["wd_mult"] == 1.0  # tokens keep weight decay
    assert where["backbone.cls_token"]["wd_mult"] == 1.0
    assert where["backbone.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.5**3)
    assert where["backbone.blocks.2.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.5)
    assert where["backbone.blocks.2.mlp.fc1.bias"]["wd_mult"] == 0.0
    assert where["backbone.blocks.1.norm1.weight"]["wd_mult"] == 0.0
    assert where["backbone.blocks.1.ls1.gamma"]["wd_mult"] == 0.0
    assert where["backbone.norm.weight"]["lr_mult"] == 1.0
    assert where["dino_head.mlp.0.weight"]["lr_mult"] == 1.0
    assert where["dino_head.last_layer.weight_v"]["is_last_layer"]
    assert where["dino_head.last_layer.weight_g"]["is_last_layer"]
    assert not where["dino_head.mlp.0.weight"]["is_last_layer"]
    keys = [(g["lr_mult"], g["wd_mult"], g["is_last_layer"]) for g in groups]
    assert len(keys) == len(set(keys))  # fused
    assert layer_id("backbone.blocks.1.7.attn.qkv.weight", 12) == 8  # chunked names
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_schedule(opt, _schedules().at(5))  # last layer frozen, lr warming up
    for g in opt.param_groups:
        if g["is_last_layer"]:
            assert g["lr"] == 0.0
        else:
            assert g["lr"] == pytest.approx(_schedules().at(5).lr * g["lr_mult"])
        assert g["weight_decay"] == pytest.approx(_schedules().at(5).weight_decay * g["wd_mult"])


def test_clipping_is_per_sub_module():
    student = _Student()
    for p in student.backbone.parameters():
        p.grad = torch.full_like(p, 10.0)
    for p in student.dino_head.parameters():
        p.grad = torch.full_like(p, 1e-4)
    before = torch.cat([p.grad.flatten() for p in student.dino_head.parameters()]).clone()
    norms = clip_grad_norms({"backbone": student.backbone, "dino_head": student.dino_head}, 3.0)
    assert norms["backbone"] > 3.0 and norms["dino_head"] < 3.0
    bb = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in student.backbone.parameters()])
    )
    assert float(bb) == pytest.approx(3.0, rel=1e-4)
    after = torch.cat([p.grad.flatten() for p in student.dino_head.parameters()])
    assert torch.equal(before, after)  # the small head was not scaled with the backbone


def test_paper_presets_reproduce_the_curriculum_recipe():
    cfg = resolve_config("vitb16-in1k")
    total = cfg.total_iterations
    assert total == 200 * 2500
    segs = segments(cfg.curriculum, total, cfg.iterations_per_epoch)
    assert [(s.start_step, s.length) for s in segs] == [(0, 500000), (375000, 125000)]
    assert stage_at_step(cfg.curriculum, 374999, total).global_crops_size == 112
    assert stage_at_step(cfg.curriculum, 375000, total).noise_patching.max_sigma == 0.2
