"""Import of DINOv2 hub weights, export to timm / DINOv2 layouts, strictness, CLI wiring."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fastdino_cli import checkpoint as ck
from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import CheckpointError
from fastdino_cli.interop import (
    dinov2_to_fastdino,
    export_checkpoint,
    fastdino_to_timm,
    import_checkpoint,
    timm_model_name,
)
from fastdino_cli.model.vit import ARCHS, build_vit, build_vit_from_arch
from tests.cli_run import run

TINY = {"embed_dim": 32, "depth": 3, "num_heads": 4, "ffn": "mlp"}


@pytest.fixture
def tiny_arch(monkeypatch):
    """Shrink the vit_tiny table entry so hub-layout files stay a few hundred KiB."""
    monkeypatch.setitem(ARCHS, "vit_tiny", dict(TINY))
    return ARCHS["vit_tiny"]


def hub_state(registers=0, ffn="mlp", seed=0):
    """A random DINOv2 backbone written in the hub key layout (as `torch.hub` models save)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="vit_tiny",
        patch_size=14,
        img_size=56,
        num_register_tokens=registers,
        layerscale_init=1.0,
        ffn=ffn,
        interpolate_offset=0.0 if registers else 0.1,  # the releases' settings
        interpolate_antialias=bool(registers),
    )
    model = build_vit(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # every entry distinct: a swapped key cannot go unnoticed
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def chunk(state, n_chunks, depth):
    """DINOv2 training layout: blocks.<chunk>.<global index>.*"""
    per = -(-depth // n_chunks)
    out = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            out[f"blocks.{int(i) // per}.{i}.{rest}"] = v
        else:
            out[k] = v
    return out


def test_hub_key_layout_is_ours(tiny_arch):
    _, sd = hub_state(registers=4)
    assert {"cls_token", "pos_embed", "register_tokens", "mask_token"} <= set(sd)
    assert sd["pos_embed"].shape == (1, 1 + 4 * 4, 32)
    assert "blocks.2.ls2.gamma" in sd and "blocks.0.mlp.fc1.weight" in sd


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("chunks", [0, 2])
def test_import_plain_and_chunked_is_exact(tiny_arch, registers, chunks, tmp_path):
    model, sd = hub_state(registers=registers)
    src = chunk(sd, chunks, 3) if chunks else sd
    if chunks:
        assert "blocks.1.2.norm1.weight" in src
    path = tmp_path / "hub.pth"
    torch.save(src, path)
    out = import_checkpoint(path, tmp_path / "x.pt", arch="vit_tiny", patch_size=14)
    ckpt = ck.load(out)
    assert set(ckpt) == {"format", "version", "config", "arch", "teacher"}
    assert ckpt["config"]["model"]["arch"] == "vit_tiny"
    assert ckpt["arch"]["num_register_tokens"] == registers
    assert ckpt["arch"]["img_size"] == 56 and ckpt["arch"]["pos_grid"] == 4
    # the releases' interpolation settings: legacy offset without registers, antialias with
    assert ckpt["arch"]["interpolate_offset"] == (0.0 if registers else 0.1)
    assert ckpt["arch"]["interpolate_antialias"] == bool(registers)
    assert set(ckpt["teacher"]) == {f"backbone.{k}" for k in sd}
    for k, v in sd.items():
        assert torch.equal(ckpt["teacher"][f"backbone.{k}"], v), k
    loaded, _ = ck.load_teacher_backbone(out)
    x = torch.randn(2, 3, 56, 42)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_export_dinov2_then_import_round_trips_bit_exactly(tiny_arch, tmp_path):
    _, sd = hub_state(registers=4)
    torch.save(chunk(sd, 2, 3), tmp_path / "hub.pth")
    first = import_checkpoint(tmp_path / "hub.pth", tmp_path / "a.pt", arch="vit_tiny")
    pth = export_checkpoint(first, tmp_path / "back.pth", format="dinov2")
    exported = torch.load(pth, weights_only=True)
    assert set(exported) == set(sd)  # plain hub names, chunking removed
    assert all(torch.equal(exported[k], sd[k]) for k in sd)
    second = import_checkpoint(pth, tmp_path / "b.pt", arch="vit_tiny", num_register_tokens=4)
    a, b = ck.load(first), ck.load(second)
    assert a["arch"] == b["arch"]
    assert set(a["teacher"]) == set(b["teacher"])
    assert all(torch.equal(a["teacher"][k], b["teacher"][k]) for k in a["teacher"])


def test_import_resamples_pos_embed_for_another_img_size(tiny_arch, tmp_path):
    _, sd = hub_state()
    torch.save(sd, tmp_path / "hub.pth")
    out = import_checkpoint(tmp_path / "hub.pth", tmp_path / "x.pt", arch="vit_tiny", img_size=28)
    teacher = ck.load(out)["teacher"]
    assert teacher["backbone.pos_embed"].shape == (1, 1 + 2 * 2, 32)
    assert torch.equal(teacher["backbone.pos_embed"][:, 0], sd["pos_embed"][:, 0])


def test_timm_export_keys_and_function(tiny_arch, tmp_path):
    model, sd = hub_state(registers=4)
    ckpt = dinov2_to_fastdino(sd, arch="vit_tiny")
    ck.save(ckpt, tmp_path / "x.pt")
    out = export_checkpoint(tmp_path / "x.pt", tmp_path / "m.safetensors", format="timm")
    timm_sd = load_file(out)
    expected = {"cls_token", "reg_token", "pos_embed", "norm.weight", "norm.bias"}
    expected |= {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(3):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
        expected |= {f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"}
    assert set(timm_sd) == expected
    # timm's no_embed_class layout: the CLS position is folded into the CLS token
    assert timm_sd["pos_embed"].shape == (1, 16, 32)
    assert torch.equal(timm_sd["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(timm_sd["reg_token"], sd["register_tokens"])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert "timm_model" not in meta  # timm has no vit_tiny_patch14_reg4_dinov2
    assert json.loads(meta["fastdino_arch"])["num_register_tokens"] == 4
    assert json.loads(meta["timm_kwargs"])["reg_tokens"] == 4
    # Same function: undo the fold with a zero CLS position and compare outputs.
    back = {k: v for k, v in timm_sd.items() if k not in ("reg_token", "pos_embed")}
    back["register_tokens"] = timm_sd["reg_token"]
    back["pos_embed"] = torch.cat([torch.zeros(1, 1, 32), timm_sd["pos_embed"]], dim=1)
    back["mask_token"] = sd["mask_token"]
    other = build_vit_from_arch(ckpt["arch"])
    other.load_state_dict(back, strict=True)
    x = torch.randn(2, 3, 56, 56)
    torch.testing.assert_close(other.eval()(x), model.eval()(x))


def test_timm_export_swiglu_and_no_registers(tiny_arch):
    tiny_arch["ffn"] = "swiglu"
    _, sd = hub_state(ffn="swiglu")
    assert "blocks.0.mlp.w12.weight" in sd
    timm_sd = fastdino_to_timm(sd, {})
    assert "blocks.0.mlp.fc1.weight" in timm_sd and "blocks.0.mlp.fc2.bias" in timm_sd
    assert not any("w12" in k or "w3" in k for k in timm_sd)
    assert torch.equal(timm_sd["blocks.1.mlp.fc1.weight"], sd["blocks.1.mlp.w12.weight"])
    assert torch.equal(timm_sd["pos_embed"], sd["pos_embed"])  # CLS position kept
    assert "mask_token" not in timm_sd and "reg_token" not in timm_sd
    giant = {"arch": "vit_giant2", "patch_size": 14, "num_register_tokens": 0}
    giant.update(ARCHS["vit_giant2"], mlp_ratio=4.0, layerscale=True)
    assert timm_model_name(giant) == "vit_giant_patch14_dinov2"
    assert timm_model_name({**giant, "num_register_tokens": 4}) == "vit_giant_patch14_reg4_dinov2"


def test_strict_import_lists_unmatched_keys(tiny_arch, tmp_path):
    _, sd = hub_state()
    sd["blocks.1.attn.rope.freqs"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(2, 32)
    del sd["blocks.2.norm2.bias"]
    with pytest.raises(CheckpointError) as e:
        dinov2_to_fastdino(sd, arch="vit_tiny", source="hub.pth")
    msg = str(e.value)
    assert "missing keys [blocks.2.norm2.bias]" in msg
    assert "unexpected keys [blocks.1.attn.rope.freqs, head.weight]" in msg
    assert "\n" not in msg


def test_import_checks_flags_against_weights(tiny_arch):
    _, sd = hub_state(registers=4)
    with pytest.raises(CheckpointError, match="register tokens 4 but --registers asks for 0"):
        dinov2_to_fastdino(sd, arch="vit_tiny", num_register_tokens=0)
    with pytest.raises(CheckpointError, match="patch size 14 but --patch asks for 16"):
        dinov2_to_fastdino(sd, arch="vit_tiny", patch_size=16)
    with pytest.raises(CheckpointError, match="width 32 but --arch asks for 384"):
        dinov2_to_fastdino(sd, arch="vit_small")
    with pytest.raises(CheckpointError, match="not one of"):
        dinov2_to_fastdino(sd, arch="vit_huge")
    with pytest.raises(CheckpointError, match="not a DINOv2 backbone state dict"):
        dinov2_to_fastdino({"weight": torch.zeros(1)}, arch="vit_tiny")


def test_bad_files(tiny_arch, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        import_checkpoint(tmp_path / "nope.pth", tmp_path / "x.pt", arch="vit_tiny")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        import_checkpoint(tmp_path / "junk.pth", tmp_path / "x.pt", arch="vit_tiny")
    torch.save({"a": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not tensors"):
        import_checkpoint(tmp_path / "list.pth", tmp_path / "x.pt", arch="vit_tiny")
    _, sd = hub_state()
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "t.pth")
    out = import_checkpoint(tmp_path / "t.pth", tmp_path / "x.pt", arch="vit_tiny")
    with pytest.raises(CheckpointError, match="already exists; pass --force"):
        import_checkpoint(tmp_path / "t.pth", out, arch="vit_tiny")
    with pytest.raises(CheckpointError, match="already a fastdino checkpoint"):
        import_checkpoint(out, tmp_path / "y.pt", arch="vit_tiny")
    with pytest.raises(CheckpointError, match="should end in .safetensors"):
        export_checkpoint(out, tmp_path / "m.pt", format="timm")
    with pytest.raises(CheckpointError, match="not one of timm, dinov2"):
        export_checkpoint(out, tmp_path / "m.onnx", format="onnx")


def test_cli_import_export(tiny_arch, tmp_path, capsys):
    model, sd = hub_state(registers=4)
    torch.save(chunk(sd, 3, 3), tmp_path / "hub.pth")
    x_pt = tmp_path / "x.pt"
    code, out, err = run(
        ["checkpoint", "import", str(tmp_path / "hub.pth"), "--arch", "vit_tiny"]
        + ["--patch", "14", "--registers", "4", "--img-size", "56", "--out", str(x_pt)],
        capsys,
    )
    assert code == 0, err
    assert f"wrote {x_pt}" in out
    code, out, _ = run(["checkpoint", "info", str(x_pt)], capsys)
    assert code == 0 and "num_register_tokens=4" in out
    for fmt, name in (("timm", "m.safetensors"), ("dinov2", "m.pth")):
        code, out, err = run(
            ["checkpoint", "export", str(x_pt), "--format", fmt, "--out", str(tmp_path / name)],
            capsys,
        )
        assert code == 0, err
    assert torch.equal(
        torch.load(tmp_path / "m.pth")["blocks.2.ls1.gamma"], sd["blocks.2.ls1.gamma"]
    )
    code, _, err = run(
        ["checkpoint", "import", str(tmp_path / "hub.pth"), "--arch", "vit_tiny"]
        + ["--registers", "0", "--out", str(tmp_path / "y.pt")],
        capsys,
    )
    assert code == 2 and err.startswith("fastdino: error: hub.pth has register tokens 4")
    assert err.count("\n") == 1


def test_cli_timm_export_refuses_legacy_interpolation_unless_asked(tiny_arch, tmp_path, capsys):
    _, sd = hub_state(registers=0)  # a non-register release: offset 0.1, no antialias
    torch.save(sd, tmp_path / "hub.pth")
    x_pt = import_checkpoint(tmp_path / "hub.pth", tmp_path / "x.pt", arch="vit_tiny")
    argv = ["checkpoint", "export", str(x_pt), "--out", str(tmp_path / "m.safetensors")]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "timm cannot reproduce" in err and "--allow-interpolation-mismatch" in err
    assert not (tmp_path / "m.safetensors").exists()
    code, out, err = run([*argv, "--allow-interpolation-mismatch"], capsys)
    assert code == 0, err
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["timm_kwargs"])["no_embed_class"] is False


class _Foreign:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"x": _Foreign()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="need arbitrary code"):
        import_checkpoint(tmp_path / "evil.pth", tmp_path / "x.pt", arch="vit_small")
