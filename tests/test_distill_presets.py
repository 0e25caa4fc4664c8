"""The distillation presets: their plans (teacher forward counted) and the CLI's one-line error
when the teacher file is missing."""

from __future__ import annotations

import json

import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import resolve_config
from fastdino_cli.model.heads import build_head
from fastdino_cli.model.vit import build_vit
from tests.test_flops import run


def _untrained_demo_dinov2(path):
    """A checkpoint with demo-dinov2's architecture and heads (weights as initialised)."""
    cfg = resolve_config("demo-dinov2")
    torch.manual_seed(0)
    vit = build_vit(cfg.model)
    parts = {"backbone": vit, "dino_head": build_head(vit.embed_dim, cfg.dino.head)}
    teacher = {f"{n}.{k}": v for n, m in parts.items() for k, v in m.state_dict().items()}
    ckpt_io.save(
        ckpt_io.make_checkpoint(config=cfg.to_dict(), arch=vit.arch_dict(), teacher=teacher), path
    )
    return path


def test_demo_distill_plan_counts_the_teacher(tmp_path, capsys):
    teacher = _untrained_demo_dinov2(tmp_path / "teacher.pt")
    argv = ["pretrain", "--preset", "demo-distill", "--plan", "--json"]
    code, out, err = run([*argv, f"distill.teacher={teacher}"], capsys)
    assert code == 0, err
    plan = json.loads(out)["run"]
    cost = plan["stages"][0]["cost"]
    code, out, err = run(["pretrain", "--preset", "demo-dinov2", "--plan", "--json"], capsys)
    own = json.loads(out)["run"]["stages"][0]["cost"]
    # the frozen teacher is demo-dinov2's backbone on the same 64 px crops (patch 8 both sides)
    assert cost["teacher_backbone"] == own["teacher_backbone"]
    assert cost["student_backbone"] < own["student_backbone"]  # narrower and shallower


def test_distill_presets_name_a_missing_teacher_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for preset in ("demo-distill", "vits14-distill-from-vitl14"):
        cfg = resolve_config(preset)
        assert cfg.distill.teacher and cfg.model.drop_path_rate == 0.0
        code, out, err = run(["pretrain", "--preset", preset, "--plan"], capsys)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "distill.teacher=" in lines[0]
        assert "does not exist" in lines[0]
