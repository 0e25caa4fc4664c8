"""Exports to timm compute fastdino's function: strict loads, features equal within 1e-5 at the
native grid, at 2x and at a non-square size, loaded exactly as docs/checkpoints.md says."""

from __future__ import annotations

import json

import pytest
import torch

from fastdino_cli import checkpoint as ck
from fastdino_cli.config import ModelConfig, resolve_config
from fastdino_cli.errors import CheckpointError
from fastdino_cli.interop import (
    TIMM_DINOV2_SIZES,
    dinov2_to_fastdino,
    export_checkpoint,
    timm_model_name,
)
from fastdino_cli.model.vit import ARCHS, build_vit

timm = pytest.importorskip("timm")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model's own init plus a position embedding, tokens and LayerScales of a trained
    model's magnitude, so that an interpolation difference shows in the features."""
    torch.manual_seed(seed)
    with torch.no_grad():
        model.pos_embed.normal_(0.0, 1.0)
        model.cls_token.normal_(0.0, 1.0)
        if model.register_tokens is not None:
            model.register_tokens.normal_(0.0, 1.0)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.1, 1.0)
    return model.eval()


def timm_from_metadata(path):
    """The lines docs/checkpoints.md gives for any export."""
    kwargs = json.loads(safe_open(str(path), "pt").metadata()["timm_kwargs"])
    if kwargs.get("mlp_layer") == "SwiGLUPacked":
        kwargs["mlp_layer"] = timm.layers.SwiGLUPacked
    model = timm.models.vision_transformer.VisionTransformer(**kwargs).eval()
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=True)
    assert not missing and not unexpected
    return model


def assert_same_features(ours, theirs, sizes):
    for h, w in sizes:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        assert a.shape == b.shape == (2, ours.embed_dim)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=f"{h}x{w}")


def test_hub_layout_vits14_reg4_loads_with_its_timm_name_at_any_size(tmp_path):
    cfg = ModelConfig(
        arch="vit_small",
        patch_size=14,
        img_size=112,  # an 8x8 position grid keeps the CPU test short (the releases: 37x37)
        num_register_tokens=4,
        layerscale_init=1.0,
    )
    hub = randomise(build_vit(cfg), seed=0)
    ckpt = dinov2_to_fastdino({k: v.clone() for k, v in hub.state_dict().items()}, arch="vit_small")
    assert ckpt["arch"]["interpolate_offset"] == 0.0 and ckpt["arch"]["interpolate_antialias"]
    ck.save(ckpt, tmp_path / "vits14_reg4.pt")
    out = export_checkpoint(tmp_path / "vits14_reg4.pt", tmp_path / "vits14_reg4.safetensors")
    meta = safe_open(str(out), "pt").metadata()
    assert meta["timm_model"] == "vit_small_patch14_reg4_dinov2"
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(out)},
        img_size=112,
        dynamic_img_size=True,
    ).eval()
    ours, _ = ck.load_teacher_backbone(tmp_path / "vits14_reg4.pt")
    # native grid, 2x, and a non-square size (timm asserts whole patches: no cropped border)
    assert_same_features(ours, model, [(112, 112), (224, 224), (98, 168)])
    assert_same_features(ours, timm_from_metadata(out), [(112, 112), (126, 84)])


def demo_checkpoint(tmp_path, **model_overrides):
    model_cfg = resolve_config("demo").model.model_copy(update=model_overrides)
    backbone = randomise(build_vit(model_cfg), seed=1)
    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    ckpt = ck.make_checkpoint(config={}, arch=backbone.arch_dict(), teacher=teacher)
    return ck.save(ckpt, tmp_path / "demo.pt"), backbone


def test_demo_architecture_runs_identically_in_timm(tmp_path):
    path, ours = demo_checkpoint(tmp_path)
    assert ours.interpolate_offset == 0.0 and ours.interpolate_antialias  # the new default
    out = export_checkpoint(path, tmp_path / "demo.safetensors")
    meta = safe_open(str(out), "pt").metadata()
    assert "timm_model" not in meta  # timm has no such model (patch 8, width 128, depth 4)
    kwargs = json.loads(meta["timm_kwargs"])
    assert kwargs["img_size"] == 32 and kwargs["patch_size"] == 8 and kwargs["depth"] == 4
    assert kwargs["embed_dim"] == 128 and kwargs["num_heads"] == 4
    assert kwargs["init_values"] == 1.0 and kwargs["dynamic_img_size"] is True
    assert kwargs["num_classes"] == 0 and kwargs["global_pool"] == "token"
    assert_same_features(ours, timm_from_metadata(out), [(32, 32), (64, 64), (40, 72)])


def test_legacy_interpolation_is_refused_unless_asked(tmp_path):
    path, ours = demo_checkpoint(tmp_path, interpolate_offset=0.1, interpolate_antialias=False)
    with pytest.raises(CheckpointError) as e:
        export_checkpoint(path, tmp_path / "m.safetensors")
    msg = str(e.value)
    assert "offset 0.1 and antialias off" in msg and "--allow-interpolation-mismatch" in msg
    assert "\n" not in msg
    out = export_checkpoint(path, tmp_path / "m.safetensors", allow_interpolation_mismatch=True)
    theirs = timm_from_metadata(out)
    assert_same_features(ours, theirs, [(32, 32)])  # identical on the native grid only
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert float((ours(x) - theirs(x)).abs().max()) > 1e-3
    # the DINOv2 hub format carries no interpolation: never refused
    export_checkpoint(path, tmp_path / "m.pth", format="dinov2")


def test_swiglu_kwargs_rebuild_the_ffn(tmp_path):
    path, ours = demo_checkpoint(tmp_path, arch="vit_tiny", embed_dim=96, ffn="swiglu")
    out = export_checkpoint(path, tmp_path / "s.safetensors")
    kwargs = json.loads(safe_open(str(out), "pt").metadata()["timm_kwargs"])
    assert kwargs["mlp_layer"] == "SwiGLUPacked" and kwargs["act_layer"] == "silu"
    assert_same_features(ours, timm_from_metadata(out), [(32, 32), (48, 40)])


def test_timm_model_names_exist_only_for_timms_shapes():
    names = set(timm.list_models("*dinov2*"))
    for arch, table in ARCHS.items():
        for regs in (0, 4):
            a = {"arch": arch, "patch_size": 14, "num_register_tokens": regs, **table}
            a.update(mlp_ratio=4.0, layerscale=True)
            name = timm_model_name(a)
            assert (name is not None) == (arch in TIMM_DINOV2_SIZES)
            assert name is None or name in names
    small = {"arch": "vit_small", "patch_size": 14, "num_register_tokens": 0, **ARCHS["vit_small"]}
    assert timm_model_name({**small, "patch_size": 16}) is None  # FastDINOv2's ViT-S/16
    assert timm_model_name({**small, "depth": 4}) is None
    assert timm_model_name({**small, "num_register_tokens": 2}) is None
    assert timm_model_name({**small, "layerscale": False}) is None
