"""Distillation (``distill.*``): frozen teacher, EMA of the student saved, no masking or drop
path, iBOT on every token of the two global crops, exact resume, feature distillation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.ssl.distill import DistillMetaArch, feature_distill_loss, match_grid
from fastdino_cli.train.build import build_train_loader, build_training
from fastdino_cli.train.distill import resolve_distill
from fastdino_cli.train.loader import StepRange
from fastdino_cli.train.loop import pretrain
from tests.test_pretrain import same_weights, tiny, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_HEAD = "{n_prototypes: 24, bottleneck_dim: 16, hidden_dim: 32, nlayers: 2}"
STUDENT = [  # narrower, shallower, another patch size: grids matched by resizing
    "model.embed_dim=16",
    "model.depth=1",
    "model.patch_size=4",
    "model.drop_path_rate=0.2",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, demo_data) -> Path:
    """A tiny trained teacher with heads (separate iBOT head, K=24): its final.pt."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    extra = [
        f"dino.head={TEACHER_HEAD}",
        f"ibot.head={TEACHER_HEAD}",
        "ibot.separate_head=true",
        "train.max_steps=2",
    ]
    pretrain(tiny(out, demo_data.train, extra=extra), progress=False)
    return out / "final.pt"


@pytest.fixture(scope="module")
def backbone_only(teacher, tmp_path_factory) -> Path:
    """The teacher without heads, as ``checkpoint import`` writes imported weights."""
    ckpt = ckpt_io.load(teacher)
    weights = ckpt_io.sub_state_dict(ckpt["teacher"], "backbone")
    path = tmp_path_factory.mktemp("imported") / "backbone.pt"
    ckpt_io.save(
        ckpt_io.make_checkpoint(
            config=ckpt["config"],
            arch=ckpt["arch"],
            teacher={f"backbone.{k}": v for k, v in weights.items()},
        ),
        path,
    )
    return path


def student_cfg(out, data, teacher_path, extra=()):
    over = [*STUDENT, f"distill.teacher={teacher_path}", *extra]
    return resolve_config(None, None, tiny_overrides(out, data, extra=over))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, demo_data, teacher):
    out = tmp_path_factory.mktemp("distilled") / "run"
    res = pretrain(student_cfg(out, demo_data.train, teacher), progress=False)
    return out, res


def metrics(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ---- the pieces ---------------------------------------------------------------------------------


def test_feature_loss_against_hand_computed_values():
    # B = 1, D = 2, one local crop
    s_global = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t_cls = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # crop 1 agrees (0), crop 2 orthogonal (1)
    s_local = torch.tensor([[1.0, 1.0]])  # 45 degrees from both teacher crops
    s_patches = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]]])
    t_patches = torch.tensor([[[2.0, 0.0]], [[3.0, 0.0]]])  # scale is ignored: 0 and 2
    cls, patch = feature_distill_loss(
        student_global_cls=s_global,
        student_local_cls=s_local,
        student_patches=s_patches,
        teacher_cls=t_cls,
        teacher_patches=t_patches,
    )
    # pairs: (g1, t1) 0, (g2, t2) 1, (l1, t1) and (l1, t2) 1 - 1/sqrt(2) each: 4 pairs
    expected = (0.0 + 1.0 + 2 * (1 - 1 / math.sqrt(2))) / 4
    assert cls.item() == pytest.approx(expected, abs=1e-6)
    assert patch.item() == pytest.approx(1.0, abs=1e-6)
    cls_no_local, _ = feature_distill_loss(
        student_global_cls=s_global,
        student_local_cls=None,
        student_patches=s_patches,
        teacher_cls=t_cls,
        teacher_patches=t_patches,
    )
    assert cls_no_local.item() == pytest.approx(0.5, abs=1e-6)


def test_match_grid_gives_the_teacher_the_students_token_grid():
    x = torch.randn(2, 3, 18, 18)  # 18 px, student patch 4: a 4 x 4 grid, 2 px border dropped
    assert match_grid(x, 4, 8).shape[-2:] == (32, 32)
    assert match_grid(x, 4, 14).shape[-2:] == (56, 56)
    same = match_grid(x, 4, 4)
    assert same.shape[-2:] == (16, 16) and torch.equal(same, x[..., :16, :16])
    y = torch.randn(1, 3, 16, 16)
    assert match_grid(y, 8, 8) is y


# ---- config resolution and bad input ------------------------------------------------------------


def test_resolved_config_has_no_masking_no_drop_path_and_the_teachers_prototypes(
    tmp_path, demo_data, teacher
):
    cfg = student_cfg(tmp_path / "r", demo_data.train, teacher)
    assert cfg.model.drop_path_rate == 0.2 and cfg.dino.head.n_prototypes == 32
    r = resolve_distill(cfg)
    assert r.model.drop_path_rate == 0.0 and r.ibot.mask_sample_probability == 0.0
    assert r.dino.head.n_prototypes == 24 and r.ibot.separate_head
    assert r.ibot.head.n_prototypes == 24
    assert r.dino.head.bottleneck_dim == cfg.dino.head.bottleneck_dim  # fresh heads of its own
    assert resolve_distill(r) == r


def test_bad_teachers_are_one_line_errors(tmp_path, demo_data, backbone_only):
    not_torch = tmp_path / "x.pt"
    not_torch.write_text("hello")
    cases = [
        (tmp_path / "nope.pt", r"distill.teacher=.*nope.pt.*does not exist"),
        (backbone_only, r"distill.teacher=.* has no DINO head.*distill.mode=features"),
        (not_torch, r"distill.teacher=.*not a readable torch checkpoint"),
    ]
    for i, (path, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=message) as e:
            pretrain(student_cfg(tmp_path / f"run{i}", demo_data.train, path), progress=False)
        assert "\n" not in str(e.value)


# ---- the step ----------------------------------------------------------------------------------


def _stack_and_batches(cfg, demo_data, steps=2):
    from fastdino_cli.data.images import scan_images

    cfg = resolve_distill(cfg)
    stack = build_training(cfg)
    files = scan_images(demo_data.train)
    rng = StepRange(start=0, stop=steps, total=cfg.total_iterations, rank=0, world_size=1)
    return cfg, stack, list(build_train_loader(cfg, files, rng, torch.device("cpu")))


def test_frozen_teacher_is_untouched_and_the_ema_follows_the_student(tmp_path, demo_data, teacher):
    cfg, stack, batches = _stack_and_batches(
        student_cfg(tmp_path / "r", demo_data.train, teacher), demo_data
    )
    core = stack.core
    assert isinstance(core, DistillMetaArch)
    frozen = {k: v.clone() for k, v in core.frozen_teacher.state_dict().items()}
    on_file = ckpt_io.load(teacher)["teacher"]
    assert same_weights(frozen, {k: on_file[k] for k in frozen})  # the file's teacher, heads too
    assert {"backbone", "dino_head", "ibot_head"} == set(core.frozen_teacher)
    assert not any(p.requires_grad for p in core.frozen_teacher.parameters())
    for batch in batches:
        ema0 = [p.clone() for p in core.teacher.parameters()]
        pending = stack.step(batch)
        record = pending.resolve()
        assert record["finite"]
        assert not core.frozen_teacher.training
        assert all(p.grad is None for p in core.frozen_teacher.parameters())
        m = record["momentum"]
        for t0, t, s in zip(
            ema0, core.teacher.parameters(), core.student.parameters(), strict=True
        ):
            torch.testing.assert_close(t, m * t0 + (1 - m) * s, rtol=1e-5, atol=1e-7)
    after = core.frozen_teacher.state_dict()
    assert same_weights(frozen, dict(after))


def test_no_masking_no_drop_path_and_ibot_on_every_global_token(
    tmp_path, demo_data, teacher, monkeypatch
):
    cfg, stack, batches = _stack_and_batches(
        student_cfg(tmp_path / "r", demo_data.train, teacher), demo_data, steps=1
    )
    core = stack.core
    assert all(blk.drop_path == 0.0 for blk in core.student["backbone"].blocks)
    batch = batches[0]
    assert not batch.masks.any() and batch.n_masked == 0
    seen = {}
    backbone = core.student["backbone"]
    real_list = backbone.forward_list

    def spy_list(xs, masks=None):
        seen["masks"] = masks
        return real_list(xs, masks)

    real_ibot = core.ibot_loss.forward

    def spy_ibot(student_logits, teacher_targets, weights, n_images):
        seen["ibot"] = (student_logits.shape, teacher_targets.shape, weights.clone(), n_images)
        return real_ibot(student_logits, teacher_targets, weights, n_images)

    monkeypatch.setattr(backbone, "forward_list", spy_list)
    monkeypatch.setattr(core.ibot_loss, "forward", spy_ibot)
    stack.step(batch).resolve()
    assert seen["masks"] is None
    two_b = batch.global_crops.shape[0]
    n = (batch.global_crops.shape[-1] // 4) ** 2  # student patch 4
    s_shape, t_shape, weights, n_images = seen["ibot"]
    assert n_images == two_b == 2 * cfg.train.batch_size_per_gpu
    assert s_shape == t_shape == (two_b * n, 24)
    torch.testing.assert_close(weights, torch.full((two_b * n,), 1.0 / n))


# ---- the loop ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_distilled_run_saves_the_students_ema_as_teacher(distilled, teacher):
    out, res = distilled
    assert res.stopped == "finished" and res.steps_done == 6
    rows = metrics(out)
    assert all(r["finite"] for r in rows) and [r["global_crops_size"] for r in rows][-1] == 24
    final = ckpt_io.load(out / "final.pt")
    assert final["arch"]["embed_dim"] == 16 and final["arch"]["patch_size"] == 4
    assert final["teacher"].keys() == final["student"].keys()
    assert not same_weights(final["teacher"], final["student"])  # the EMA, not the student
    assert not any(k.startswith("frozen_teacher") for k in final["teacher"])
    assert final["teacher"]["dino_head.last_layer.weight_v"].shape[0] == 24
    backbone, _ = ckpt_io.load_teacher_backbone(out / "final.pt")
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 16)
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["distill"]["teacher"] == str(teacher)
    assert stored["model"]["drop_path_rate"] == 0.0
    assert stored["ibot"]["mask_sample_probability"] == 0.0


@pytest.mark.slow
def test_distilled_run_resumes_exactly(distilled, tmp_path, demo_data, teacher):
    ref, _ = distilled
    out = tmp_path / "split"
    first = pretrain(
        student_cfg(out, demo_data.train, teacher, ["train.max_steps=3"]), progress=False
    )
    assert first.stopped == "max_steps"
    second = pretrain(student_cfg(out, demo_data.train, teacher), progress=False)
    assert second.resumed_from == 3 and second.steps_done == 6
    keys = ("step", "loss", "dino_global", "dino_local", "ibot", "koleo", "lr")
    assert [[r[k] for k in keys] for r in metrics(out)] == [
        [r[k] for k in keys] for r in metrics(ref)
    ]
    a, b = ckpt_io.load(ref / "final.pt"), ckpt_io.load(out / "final.pt")
    assert same_weights(a["teacher"], b["teacher"]) and same_weights(a["student"], b["student"])


@pytest.mark.slow
def test_feature_distillation_from_a_backbone_without_heads(tmp_path, demo_data, backbone_only):
    out = tmp_path / "feat"
    cfg = student_cfg(
        out, demo_data.train, backbone_only, ["distill.mode=features", "train.max_steps=3"]
    )
    res = pretrain(cfg, progress=False)
    assert res.steps_done == 3
    rows = metrics(out)
    assert all(r["finite"] for r in rows)
    assert all(0.0 <= r["distill_cls"] <= 2.0 and 0.0 <= r["distill_patch"] <= 2.0 for r in rows)
    assert rows[-1]["distill_patch"] < rows[0]["distill_patch"]  # it learns
    final = ckpt_io.load(out / "final.pt")
    assert {k.split(".")[0] for k in final["teacher"]} == {"backbone", "cls_proj", "patch_proj"}
    assert final["teacher"]["cls_proj.weight"].shape == (32, 16)  # student 16 -> teacher 32
    backbone, _ = ckpt_io.load_teacher_backbone(out / "final.pt")
    assert backbone(torch.randn(1, 3, 16, 16)).shape == (1, 16)


def test_plan_counts_the_frozen_teachers_forward(tmp_path, demo_data, teacher, backbone_only):
    from fastdino_cli.config import ModelConfig
    from fastdino_cli.train.flops import config_image_cost, counted_backbone_flops

    cfg = student_cfg(tmp_path / "r", demo_data.train, teacher)
    cost = config_image_cost(cfg, 16, 8)
    t_model = ModelConfig(
        arch="vit_tiny", embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=16
    )
    # student grid 16 // 4 = 4 -> the teacher sees 4 x 8 = 32 px crops, two per image
    assert cost.teacher_backbone == pytest.approx(2 * counted_backbone_flops(t_model, 32) * 1e-9)
    own = config_image_cost(
        cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher": None})}), 16, 8
    )
    assert cost.teacher_backbone > own.teacher_backbone  # the larger teacher, not the EMA copy
    assert cost.student_backbone == pytest.approx(own.student_backbone)
    feat = config_image_cost(
        student_cfg(tmp_path / "f", demo_data.train, backbone_only, ["distill.mode=features"]),
        16,
        8,
    )
    assert feat.teacher_heads == 0 and feat.teacher_backbone == cost.teacher_backbone
    # projections on 2 + 2 CLS tokens and 2 x 16 patch tokens, 2 x 16 x 32 FLOPs each, x3
    assert feat.student_heads == pytest.approx(3 * (4 + 32) * 2 * 16 * 32 * 1e-9)
