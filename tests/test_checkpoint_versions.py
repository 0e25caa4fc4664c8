"""Old checkpoint format versions stay loadable: one fixture per version (``tests/fixtures``).

``checkpoint_v1.pt`` is a resumable checkpoint (step 2 of 4) written by fastdino at commit
61787a0, the last v1 code: a 16-wide, 1-block ViT with separate DINO (K=16) and iBOT (K=12)
heads whose prototype layers were ``F.normalize(last_layer.weight)`` with no scale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.checkpoint import load_teacher_backbone, sub_state_dict
from fastdino_cli.config import validate_config
from fastdino_cli.model.heads import build_head
from fastdino_cli.train.loop import pretrain

V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1.pt"
HEADS = {"dino_head": 16, "ibot_head": 12}

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_v1() -> dict:
    return torch.load(V1, weights_only=True)


def test_v1_fixture_is_what_it_claims():
    raw = raw_v1()
    assert raw["version"] == 1
    assert "dino_head.last_layer.weight" in raw["teacher"]
    assert "train_state" in raw and raw["train_state"]["step"] == 2


def test_v1_loads_as_current_version_with_unit_scales():
    raw = raw_v1()
    ckpt = ckpt_io.load(V1)
    assert ckpt["version"] == ckpt_io.VERSION == 2
    for key in ("teacher", "student"):
        state = ckpt[key]
        assert not any(k.endswith("last_layer.weight") for k in state)
        for head, k in HEADS.items():
            v = state[f"{head}.last_layer.weight_v"]
            assert torch.equal(v, raw[key][f"{head}.last_layer.weight"])
            assert torch.equal(state[f"{head}.last_layer.weight_g"], torch.ones(k, 1))
        other = {n for n in raw[key] if "last_layer" not in n}
        assert all(torch.equal(state[n], raw[key][n]) for n in other)
    # the run trained with the scale fixed at 1: its config says so now
    assert ckpt["config"]["dino"]["head"]["norm_last_layer"] is True
    assert ckpt["config"]["ibot"]["head"]["norm_last_layer"] is True
    assert ckpt["config"]["model"]["interpolate_offset"] == 0.1  # stored, kept
    groups = ckpt["train_state"]["optimizer"]["param_groups"]
    last = next(g for g in groups if g["is_last_layer"])
    assert last["names"] == ["dino_head.last_layer.weight_v", "ibot_head.last_layer.weight_v"]


def test_v1_heads_compute_the_same_logits():
    raw = raw_v1()
    ckpt = ckpt_io.load(V1)
    cfg = validate_config(ckpt["config"])
    x = torch.randn(5, 16)
    for head_name, head_cfg in (("dino_head", cfg.dino.head), ("ibot_head", cfg.ibot.head)):
        head = build_head(16, head_cfg)
        head.load_state_dict(sub_state_dict(ckpt["teacher"], head_name))
        old = sub_state_dict(raw["teacher"], head_name)
        with torch.no_grad():  # the v1 forward, written out
            h = F.gelu(x @ old["mlp.0.weight"].T + old["mlp.0.bias"])
            h = F.normalize(h @ old["mlp.2.weight"].T + old["mlp.2.bias"], dim=-1)
            expected = h @ F.normalize(old["last_layer.weight"], dim=1).T
            torch.testing.assert_close(head(x), expected, rtol=0, atol=1e-6)
        assert not head.last_layer.weight_g.requires_grad


def test_v1_backbone_loads_for_evaluation():
    model, _ = load_teacher_backbone(V1)
    assert model.interpolate_offset == 0.1 and not model.interpolate_antialias
    with torch.no_grad():
        assert model(torch.randn(2, 3, 24, 24)).shape == (2, 16)


def test_v1_run_resumes_and_saves_the_current_version(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(V1, run / "checkpoint.pt")
    data = ckpt_io.load(V1)["config"]
    data["data"]["train"] = str(images)
    data["train"]["output_dir"] = str(run)
    data["train"]["max_steps"] = 3
    result = pretrain(validate_config(data), resume=True, force_config=True, progress=False)
    assert result.resumed_from == 2
    after = ckpt_io.load(run / "checkpoint.pt")
    assert after["version"] == ckpt_io.VERSION and after["train_state"]["step"] == 3
    before = ckpt_io.load(V1)
    for head, k in HEADS.items():  # still frozen at 1; the directions trained on
        assert torch.equal(after["student"][f"{head}.last_layer.weight_g"], torch.ones(k, 1))
    assert not torch.equal(
        after["student"]["backbone.blocks.0.attn.qkv.weight"],
        before["student"]["backbone.blocks.0.attn.qkv.weight"],
    )
