"""The ViT backbone: shapes for every arch, tokens, masks, pos-embed interpolation, init."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import CheckpointError
from fastdino_cli.model.vit import (
    ARCHS,
    VisionTransformer,
    build_vit,
    build_vit_from_arch,
    ffn_hidden_dim,
    interpolate_pos_embed,
)


def tiny(**kw) -> VisionTransformer:
    base = {"arch": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 4, "patch_size": 8}
    base.update(img_size=32)
    base.update(kw)
    torch.manual_seed(0)
    return build_vit(ModelConfig(**base)).eval()


@functools.cache
def meta_model(arch: str) -> VisionTransformer:
    cfg = ModelConfig(arch=arch, patch_size=14, img_size=518, num_register_tokens=4)
    return build_vit(cfg, device="meta")


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("res", [(224, 224), (98, 112), (518, 518)])
def test_shapes_every_arch_on_meta(arch, res):
    model = meta_model(arch)
    d = ARCHS[arch]["embed_dim"]
    assert model.embed_dim == d and len(model.blocks) == ARCHS[arch]["depth"]
    x = torch.empty(2, 3, *res, device="meta")
    out = model.forward_features(x)
    n = (res[0] // 14) * (res[1] // 14)
    assert out.cls.shape == (2, d)
    assert out.registers.shape == (2, 4, d)
    assert out.patches.shape == (2, n, d)
    assert out.prenorm.shape == (2, 1 + 4 + n, d)


def test_param_counts_match_released_models():
    # Parameter counts of the released hub models (patch 14, 518 px grid, no registers).
    expected = {"vit_small": 22_056_576, "vit_base": 86_580_480, "vit_giant2": 1_136_480_768}
    for arch, count in expected.items():
        m = build_vit(ModelConfig(arch=arch, patch_size=14, img_size=518), device="meta")
        assert sum(p.numel() for p in m.parameters()) == count, arch


def test_swiglu_hidden_rounding_and_names():
    assert ffn_hidden_dim(1536, 4.0, "swiglu") == 4096
    assert ffn_hidden_dim(32, 4.0, "swiglu") == 88  # int(128 * 2/3)=85 -> 88
    assert ffn_hidden_dim(384, 4.0, "mlp") == 1536
    m = tiny(ffn="swiglu")
    keys = set(m.state_dict())
    assert {"blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias"} <= keys
    assert m.state_dict()["blocks.0.mlp.w12.weight"].shape == (2 * 88, 32)


def test_layerscale_none_is_identity():
    m = tiny(layerscale_init=None)
    assert isinstance(m.blocks[0].ls1, torch.nn.Identity)
    assert not any("ls1" in k for k in m.state_dict())
    m2 = tiny(layerscale_init=0.5)
    assert torch.all(m2.blocks[1].ls2.gamma == 0.5)


def test_registers_excluded_from_patches_and_have_no_pos_embed():
    m = tiny(num_register_tokens=3)
    x = torch.randn(2, 3, 32, 32)
    out = m.forward_features(x)
    assert out.patches.shape == (2, 16, 32) and out.registers.shape == (2, 3, 32)
    tokens = m.prepare_tokens(x)
    # registers sit right after CLS and are the raw register parameters (no pos embed)
    torch.testing.assert_close(tokens[:, 1:4], m.register_tokens.expand(2, -1, -1))
    torch.testing.assert_close(m.norm(out.prenorm)[:, 4:], out.patches)
    torch.testing.assert_close(m.norm(out.prenorm)[:, 1:4], out.registers)


def test_masks_replace_exactly_the_masked_tokens():
    m = tiny(num_register_tokens=1)
    with torch.no_grad():
        m.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5, 7]] = True
    masks[1, 15] = True
    plain = m.prepare_tokens(x)
    masked = m.prepare_tokens(x, masks)
    pos = m.pos_embed[:, 1:]
    expect = torch.where(masks[..., None], m.mask_token + pos, plain[:, 2:])
    torch.testing.assert_close(masked[:, 2:], expect)
    assert torch.equal(masked[:, :2], plain[:, :2])
    out = m.forward_features(x, masks)
    assert out.masks is masks


def test_pos_embed_identity_at_native_grid():
    pe = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pe, (4, 4)) is pe
    m = tiny()
    x = torch.randn(1, 3, 32, 32)
    tokens = m.prepare_tokens(x)
    torch.testing.assert_close(tokens[:, 1:], m.patch_embed(x) + m.pos_embed[:, 1:])
    torch.testing.assert_close(tokens[:, 0], (m.cls_token + m.pos_embed[:, :1])[:, 0])


@pytest.mark.parametrize("offset", [0.0, 0.1])
@pytest.mark.parametrize("antialias", [False, True])
def test_pos_embed_interpolation_matches_direct_bicubic(offset, antialias):
    torch.manual_seed(1)
    pe = torch.randn(1, 1 + 37 * 37, 6, dtype=torch.float64)
    out = interpolate_pos_embed(pe, (16, 12), offset=offset, antialias=antialias)
    assert out.shape == (1, 1 + 16 * 12, 6) and out.dtype == torch.float64
    assert torch.equal(out[:, :1], pe[:, :1])
    grid = pe[:, 1:].float().reshape(1, 37, 37, 6).permute(0, 3, 1, 2)
    kw = {"scale_factor": ((16 + offset) / 37, (12 + offset) / 37)} if offset else {}
    kw = kw or {"size": (16, 12)}
    ref = F.interpolate(grid, mode="bicubic", antialias=antialias, **kw)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, -1, 6).double())


def test_pos_embed_bad_grid_is_checkpoint_error():
    with pytest.raises(CheckpointError, match="not a square"):
        interpolate_pos_embed(torch.zeros(1, 1 + 15, 4), (3, 3))


def test_forward_any_resolution_and_intermediate_layers():
    m = tiny(num_register_tokens=2)
    x = torch.randn(2, 3, 40, 56)
    out = m.forward_features(x)
    assert out.patches.shape == (2, 5 * 7, 32)
    torch.testing.assert_close(m(x), out.cls)
    layers = m.get_intermediate_layers(x, n=2)
    assert len(layers) == 2
    patches, cls = layers[-1]
    torch.testing.assert_close(patches, out.patches)
    torch.testing.assert_close(cls, out.cls)
    raw = m.get_intermediate_layers(x, n=1, norm=False)[0]
    torch.testing.assert_close(raw[1], out.prenorm[:, 0])
    with pytest.raises(ValueError):
        m.get_intermediate_layers(x, n=3)


def test_init_leaves_nothing_uninitialised_and_follows_reference():
    m = tiny(num_register_tokens=2)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(float("nan"))
    m.init_weights()
    for name, p in m.named_parameters():
        assert torch.isfinite(p).all(), name
    assert torch.equal(m.mask_token, torch.zeros_like(m.mask_token))
    assert m.cls_token.abs().max() < 1e-4 and m.register_tokens.abs().max() < 1e-4
    assert torch.equal(m.blocks[0].attn.qkv.bias, torch.zeros_like(m.blocks[0].attn.qkv.bias))
    assert 0.01 < m.blocks[0].mlp.fc1.weight.std() < 0.03
    assert torch.equal(m.norm.weight, torch.ones(32))


def test_gradient_reaches_every_parameter():
    m = tiny(num_register_tokens=1).train()
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, :3] = True
    out = m.forward_features(torch.randn(2, 3, 32, 32), masks)
    (out.cls.sum() + out.patches.pow(2).sum() + out.registers.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_arch_dict_rebuilds_identical_model():
    m = tiny(num_register_tokens=2, ffn="swiglu", layerscale_init=None, interpolate_offset=0.0)
    m2 = build_vit_from_arch(m.arch_dict())
    m2.load_state_dict(m.state_dict(), strict=True)
    assert m2.arch_dict() == m.arch_dict()
    x = torch.randn(1, 3, 24, 32)
    torch.testing.assert_close(m2.eval()(x), m(x))
    with pytest.raises(CheckpointError, match="lacks"):
        build_vit_from_arch({"embed_dim": 8})


def test_load_teacher_backbone_strict(tmp_path):
    from fastdino_cli import checkpoint as ck

    m = tiny(num_register_tokens=1)
    teacher = {f"backbone.{k}": v for k, v in m.state_dict().items()}
    teacher["dino_head.w"] = torch.zeros(2)
    ckpt = ck.make_checkpoint(config={}, arch=m.arch_dict(), teacher=teacher)
    path = ck.save(ckpt, tmp_path / "t.pt")
    loaded, raw = ck.load_teacher_backbone(path)
    assert not loaded.training and raw["arch"] == m.arch_dict()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), m(x))
    del ckpt["teacher"]["backbone.norm.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \[norm.bias\]"):
        ck.load_teacher_backbone(ckpt)


@pytest.mark.parametrize("efficient", [True, False])
def test_training_with_drop_path_multicrop_backward(efficient):
    m = tiny(num_register_tokens=1, drop_path_rate=0.5, efficient_drop_path=efficient).train()
    g, loc = torch.randn(4, 3, 32, 32), torch.randn(3, 3, 16, 16)
    outs = m.forward_list([g, loc], [torch.rand(4, 16) < 0.3, None])
    assert [o.patches.shape for o in outs] == [(4, 16, 32), (3, 4, 32)]
    sum(o.cls.sum() + o.patches.sum() for o in outs).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_meta_build_then_materialise_and_init():
    m = build_vit(ModelConfig(arch="vit_tiny", depth=2, patch_size=8, img_size=32), device="meta")
    assert m.pos_embed.is_meta
    m = m.to_empty(device="cpu")
    m.init_weights()
    for name, p in m.named_parameters():
        assert torch.isfinite(p).all(), name
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 192)


def test_gradcam_target_layer_sees_image_tokens():
    m = tiny(num_register_tokens=2)
    seen = []
    m.blocks[-1].norm1.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    m(torch.randn(3, 3, 32, 32))
    assert seen == [(3, 1 + 2 + 16, 32)]
