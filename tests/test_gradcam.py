"""Grad-CAM on ViTs: reshape, layer, frozen/no_grad/bf16/compile, behaviour, targets, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastdino_cli import checkpoint as ck
from fastdino_cli.cli import main
from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import CheckpointError, ConfigError, DataError
from fastdino_cli.eval.classifier import load_probe_classifier, make_probe_entry, save_probe_entry
from fastdino_cli.eval.features import FeatureRecipe, eval_transform
from fastdino_cli.eval.gradcam.cam import (
    METHODS,
    CosineTarget,
    ProjectionTarget,
    TokenGridReshape,
    class_targets,
    compute_cam,
    resolve_module,
    similarity_targets,
)
from fastdino_cli.eval.gradcam.result import load_gradcam
from fastdino_cli.eval.gradcam.run import run_gradcam
from fastdino_cli.figures.gradcam import draw_gradcam
from fastdino_cli.model.vit import build_vit
from tests import probe_helpers

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(regs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="vit_tiny",
        patch_size=8,
        img_size=32,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_register_tokens=regs,
    )
    return build_vit(cfg).eval()


def frozen_classifier(regs: int = 2, classes: int = 5) -> tuple[nn.Module, nn.Module]:
    backbone = tiny_vit(regs)
    model = nn.Sequential(backbone, nn.Linear(32, classes))
    model.requires_grad_(False)
    return model, backbone


# ---- reshape and layer --------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(2, 2), (3, 5), (14, 14), (1, 7)])
@pytest.mark.parametrize("regs", [0, 1, 4])
def test_reshape_drops_cls_and_registers_and_folds_row_major(grid, regs):
    gh, gw = grid
    b, d, prefix = 2, 6, 1 + regs
    tokens = torch.randn(b, prefix + gh * gw, d)
    # tag each patch token with its (row, col); prefix tokens carry a sentinel
    tokens[:, :prefix, 0] = -1000.0
    for r in range(gh):
        for c in range(gw):
            tokens[:, prefix + r * gw + c, 0] = r
            tokens[:, prefix + r * gw + c, 1] = c
    fmap = TokenGridReshape(prefix, grid)(tokens)
    assert fmap.shape == (b, d, gh, gw)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    assert torch.equal(fmap[:, 0], rows.float().expand(b, -1, -1))
    assert torch.equal(fmap[:, 1], cols.float().expand(b, -1, -1))
    assert not (fmap == -1000.0).any()
    torch.testing.assert_close(fmap[1, :, gh - 1, gw - 1], tokens[1, -1])


def test_reshape_rejects_a_token_count_that_does_not_match_the_grid():
    with pytest.raises(ValueError, match=r"5 prefix tokens \+ a 4x4 patch grid = 21"):
        TokenGridReshape(5, (4, 4))(torch.randn(1, 17, 8))  # 1 + 16 (registers forgotten)


def test_target_layer_path_and_its_errors():
    vit = tiny_vit()
    assert resolve_module(vit, "blocks.-1.norm1") is vit.blocks[-1].norm1
    assert resolve_module(vit, "blocks.0.norm2") is vit.blocks[0].norm2
    with pytest.raises(ConfigError, match=r"has no child 'norm3' \(children: \[.*'norm1'"):
        resolve_module(vit, "blocks.-1.norm3")
    with pytest.raises(ConfigError, match="no child '7'"):
        resolve_module(vit, "blocks.7.norm1")


# ---- maps: size, range, frozen weights, no_grad, bf16, compile -----------------------------


@pytest.mark.parametrize("size", [(32, 32), (32, 48), (48, 24)])
def test_maps_have_the_input_size_and_lie_in_unit_range(size):
    model, vit = frozen_classifier()
    x = torch.randn(3, 3, *size)
    maps = compute_cam(model, x, class_targets([0, 1, 2]), backbone=vit)
    assert maps.shape == (3, *size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.allclose(maps.reshape(3, -1).max(1), 1.0, atol=1e-4)  # each map scaled to [0, 1]


def test_size_not_a_multiple_of_the_patch_is_a_clear_error():
    model, vit = frozen_classifier()
    with pytest.raises(ConfigError, match="not a multiple of the patch size 8; use e.g. --image-s"):
        compute_cam(model, torch.randn(1, 3, 36, 32), class_targets([0]), backbone=vit)


@pytest.mark.parametrize("context", ["plain", "no_grad", "inference_mode"])
def test_frozen_backbone_gives_nonzero_maps_even_under_no_grad(context):
    model, vit = frozen_classifier()
    head = model[1]
    head.weight.requires_grad_(True)  # a trainable head must not collect .grad from Grad-CAM
    assert not any(p.requires_grad for p in vit.parameters())
    ctx = {"plain": torch.enable_grad, "no_grad": torch.no_grad}.get(context, torch.inference_mode)
    with ctx():
        maps = compute_cam(model, torch.randn(2, 3, 32, 32), class_targets([1, 3]), backbone=vit)
    assert (maps.reshape(2, -1).max(1) > 0.99).all()
    assert (maps > 0.05).mean() > 0.1  # a spread-out map, not a single hot pixel
    assert not any(p.requires_grad for p in vit.parameters())
    assert head.weight.requires_grad and head.weight.grad is None


def test_bf16_and_compiled_modules_are_run_uncompiled_in_fp32():
    model, vit = frozen_classifier()
    x = torch.randn(2, 3, 32, 32)
    ref = compute_cam(model, x, class_targets([0, 1]), backbone=vit)
    compiled = torch.compile(model, backend="eager")  # wrapper whose graph would skip our hooks
    maps = compute_cam(compiled, x, class_targets([0, 1]), backbone=vit)
    np.testing.assert_allclose(maps, ref, atol=1e-5)
    bf16 = model.to(torch.bfloat16)  # the package fails on bf16 ("unsupported ScalarType")
    maps = compute_cam(bf16, x, class_targets([0, 1]), backbone=vit)
    assert next(model.parameters()).dtype == torch.float32
    # same map up to the weights' bf16 rounding
    assert np.abs(maps - ref).max() < 0.05
    assert np.corrcoef(maps.ravel(), ref.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_a_register_vit(method):
    model, vit = frozen_classifier(regs=4)
    x = torch.randn(2, 3, 32, 24)
    targets = class_targets([0, 4]) if METHODS[method].uses_targets else None
    maps = compute_cam(model, x, targets, backbone=vit, method=method)
    assert maps.shape == (2, 32, 24) and maps.min() >= 0 and maps.max() <= 1
    assert maps.max() > 0  # gradcam++ can be near-degenerate on random weights, never empty


def test_unknown_method_is_a_one_line_error():
    model, vit = frozen_classifier()
    with pytest.raises(ConfigError, match="unknown Grad-CAM method 'gradcan'; choose one of gradc"):
        compute_cam(model, torch.randn(1, 3, 32, 32), None, backbone=vit, method="gradcan")


def test_the_light_spec_names_every_method_and_the_default_layer():
    """``--help`` reads the names from spec.py (no grad-cam import); they are cam.py's."""
    from fastdino_cli.eval.gradcam import cam, spec

    assert tuple(METHODS) == spec.METHOD_NAMES
    assert cam.DEFAULT_TARGET_LAYER == spec.DEFAULT_TARGET_LAYER


def test_own_embedding_cosine_has_no_gradient_so_self_uses_the_projection():
    vit = tiny_vit()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    emb = vit(x)
    g_cos = torch.autograd.grad(CosineTarget(emb[0])(emb[0]), x, retain_graph=True)[0]
    g_proj = torch.autograd.grad(ProjectionTarget(emb[0])(emb[0]), x)[0]
    assert g_cos.norm() < 1e-4 * g_proj.norm()  # cosine to itself is at its maximum


# ---- behaviour: the map follows the region the prediction depends on -----------------------


class _RegionReadout(nn.Module):
    """Last block: CLS += mean of norm1(tokens) over one region of the patch grid."""

    def __init__(self, d: int, prefix: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.prefix = prefix
        self.register_buffer("mask", mask)

    def forward(self, x):
        pooled = self.norm1(x)[:, self.prefix :][:, self.mask].mean(1)
        return torch.cat([(x[:, 0] + pooled)[:, None], x[:, 1:]], 1)


class RegionToy(nn.Module):
    """Token layout [CLS, 2 registers, patches]; class 0 'red' vs 1 'green' read in one region."""

    patch_size, num_register_tokens = 8, 2

    def __init__(self, grid, region, d: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        p = self.patch_size
        self.patch_embed = nn.Conv2d(3, d, p, p, bias=False)
        w = torch.zeros(d, 3, p, p)
        w[: d // 2, 0], w[d // 2 :, 1] = 1.0 / p**2, 1.0 / p**2
        self.patch_embed.weight.data.copy_(w + 0.3 * torch.randn(w.shape, generator=g) / p**2)
        self.prefix = nn.Parameter(torch.randn(1, 3, d, generator=g))
        mask = torch.zeros(grid, dtype=torch.bool)
        mask[region] = True
        self.blocks = nn.ModuleList([_RegionReadout(d, 3, mask.flatten())])
        u = torch.cat([torch.ones(d // 2), -torch.ones(d // 2)])
        self.head = nn.Linear(d, 2, bias=False)
        self.head.weight.data.copy_(torch.stack([u, -u]))
        self.requires_grad_(False)

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(len(t), -1, -1), t], 1)
        return self.head(self.blocks[0](t)[:, 0])


@pytest.mark.parametrize(
    ("method", "least"),
    [("gradcam", 0.3), ("gradcam++", 0.3), ("scorecam", 0.3), ("hirescam", 0.8), ("layercam", 0.8)],
)
def test_map_mass_concentrates_on_the_region_the_prediction_reads(method, least):
    g = torch.Generator().manual_seed(1)
    x = 0.02 * torch.randn(4, 3, 32, 48, generator=g)  # 4x6 grid, faint background noise
    texture = 0.5 + torch.rand(4, 1, 16, 16, generator=g)
    x[:, 0:1, :16, :16] += texture  # red object, top left (grid rows 0-1, cols 0-1)
    x[:, 1:2, 16:, 32:] += texture  # green object, bottom right (grid rows 2-3, cols 4-5)
    top_left, bottom_right = (slice(0, 16), slice(0, 16)), (slice(16, 32), slice(32, 48))
    cases = [
        ((slice(0, 2), slice(0, 2)), 0, top_left, bottom_right),
        ((slice(2, 4), slice(4, 6)), 1, bottom_right, top_left),
    ]
    for region, label, read, other in cases:
        model = RegionToy((4, 6), region)
        with torch.no_grad():
            pred = model(x).argmax(-1)
        assert (pred == label).all()
        maps = compute_cam(model, x, class_targets(pred.tolist()), backbone=model, method=method)
        total = maps.sum((1, 2))
        inside = maps[:, read[0], read[1]].sum((1, 2)) / total
        distractor = maps[:, other[0], other[1]].sum((1, 2)) / total
        # the read region is 1/6 of the image; the distractor holds an object of the same kind
        assert (inside > least).all(), inside
        assert (inside > 10 * distractor).all(), (inside, distractor)


# ---- run_gradcam: targets, inputs, errors, outputs, CLI ------------------------------------


def tiny_checkpoint(path, *, seed: int = 0, depth: int = 2):
    """The evaluation tests' tiny checkpoint with 2 registers (the reshape drops them). No
    LayerScale: with the 1e-5 init every random embedding is nearly the same vector and cosine
    targets saturate."""
    return probe_helpers.tiny_checkpoint(path, seed=seed, depth=depth, registers=2)


def with_probe(path, class_names, seed=0):
    g = torch.Generator().manual_seed(seed)
    entry = make_probe_entry(
        weight=torch.randn(len(class_names), 32, generator=g),
        bias=torch.zeros(len(class_names)),
        n_last_blocks=1,
        avgpool=False,
        lr=0.01,
        recipe=FeatureRecipe(resize_size=37, crop_size=32),
        class_names=class_names,
        accuracy={"linear_top1": 0.0},
        protocol={"note": "random head for tests"},
    )
    return save_probe_entry(path, entry)


@pytest.fixture
def ckpts(tmp_path, demo_data):
    plain = tiny_checkpoint(tmp_path / "base" / "final.pt", depth=2)
    probed = with_probe(
        tiny_checkpoint(tmp_path / "fast" / "final.pt", seed=1, depth=2),
        sorted(demo_data.class_names),
    )
    return probed, plain


@pytest.mark.parametrize(
    "target", ["predicted", "true", "class:cat", "self", "prototype", "prototype:brick"]
)
def test_every_target_mode_runs_and_explains_what_it_says(ckpts, demo_data, target):
    probed, plain = ckpts
    models = [probed] if target in ("predicted", "true", "class:cat") else [probed, plain]
    result = run_gradcam(
        models, data=demo_data.val, per_class=1, target=target, batch_size=4, device="cpu"
    )
    n, names = demo_data.num_classes, sorted(demo_data.class_names)
    assert [s.true_class for s in result.samples] == names
    assert result.pixels.shape == (n, 32, 32, 3)
    for col in result.columns:
        assert col.maps.shape == (n, 32, 32) and col.maps.min() >= 0 and col.maps.max() <= 1
        assert col.maps.max() > 0.99  # random weights: some maps are legitimately all zero
    first = result.columns[0]
    wanted = {
        "predicted": first.predicted,
        "true": names,
        "class:cat": ["cat"] * n,
        "self": names,
        "prototype": names,
        "prototype:brick": ["brick"] * n,
    }[target]
    pixels = torch.from_numpy(result.pixels).permute(0, 3, 1, 2)
    if target in ("predicted", "true", "class:cat"):
        assert first.explained == [f"class {c}" for c in wanted]
        with torch.no_grad():
            probs = load_probe_classifier(probed).forward_pixels(pixels).softmax(-1)
        idx = torch.tensor([names.index(c) for c in wanted])
        np.testing.assert_allclose(first.score, probs[torch.arange(n), idx], rtol=1e-4)
        assert first.predicted == [names[i] for i in probs.argmax(-1)]
    elif target == "self":
        assert first.explained == ["own embedding"] * n
    else:  # cosine to the class mean of the other images, computed independently here
        col = result.columns[1]
        assert col.explained == [f"prototype {c}" for c in wanted]
        vit, _ = ck.load_teacher_backbone(plain)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        explained = {s.path for s in result.samples}
        tf = eval_transform(FeatureRecipe(resize_size=37, crop_size=32), normalize=False)
        with torch.no_grad():
            emb = vit((pixels - mean) / std)
            for i, c in enumerate(wanted):
                files = [f for f in sorted((demo_data.val / c).iterdir()) if f not in explained]
                x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files])
                proto = torch.nn.functional.normalize(vit((x - mean) / std), dim=-1).mean(0)
                cos = torch.nn.functional.cosine_similarity(emb[i], proto, dim=0)
                assert col.score[i] == pytest.approx(float(cos), abs=1e-4)


def test_eigencam_needs_no_probe_and_predictions_come_from_the_probe(ckpts, demo_data):
    probed, plain = ckpts
    result = run_gradcam([probed, plain], data=demo_data.val, per_class=1, method="eigencam")
    assert result.columns[1].predicted == [None] * demo_data.num_classes
    assert all(p is not None for p in result.columns[0].predicted)
    assert result.columns[1].explained[0] == "activations (eigencam)"


def test_errors_are_one_line_and_name_the_culprit(ckpts, demo_data, tmp_path):
    probed, plain = ckpts
    with pytest.raises(CheckpointError) as e:
        run_gradcam([probed, plain], data=demo_data.val, per_class=1)
    msg = str(e.value)
    assert "\n" not in msg and str(plain) in msg and "has no probe head" in msg
    assert "--target self|prototype" in msg
    bad = tmp_path / "imgs" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*broken.png: .*remove or replace"):
        run_gradcam([plain], images=[bad.parent], target="self")
    with pytest.raises(DataError, match="missing.png does not exist"):
        run_gradcam([plain], images=[tmp_path / "missing.png"], target="self")
    with pytest.raises(ConfigError, match="bad --target 'klass:cat'"):
        run_gradcam([probed], data=demo_data.val, target="klass:cat")
    with pytest.raises(ConfigError, match="'dog' is not a class of the probe"):
        run_gradcam([probed], data=demo_data.val, per_class=1, target="class:dog")
    good = tmp_path / "loose" / "a.png"
    good.parent.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(good)
    with pytest.raises(DataError, match="a.png has no known true class for --target true"):
        run_gradcam([probed], images=[good], target="true")


def test_images_from_files_folders_and_lists_keep_known_labels(ckpts, demo_data, tmp_path):
    probed, _ = ckpts
    cat = sorted((demo_data.val / "cat").iterdir())[:2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two cats\n{cat[0]}\n{cat[1]}\n")
    result = run_gradcam([probed], images=[listing, demo_data.val / "brick"], target="true")
    assert [s.true_class for s in result.samples] == ["cat"] * 2 + ["brick"] * 4
    assert result.columns[0].explained == ["class cat"] * 2 + ["class brick"] * 4


def test_outputs_grid_png_npy_and_json(ckpts, demo_data, tmp_path):
    probed, plain = ckpts
    out = tmp_path / "out"
    result = run_gradcam(
        [probed, plain],
        images=[demo_data.val / "cat"],
        target="self",
        names=["fast", "base"],
        out=out,
    )
    meta = json.loads((out / "gradcam.json").read_text())
    assert [c["name"] for c in meta["columns"]] == ["fast", "base"]
    assert meta["target_layer"] == "blocks.-1.norm1" and meta["image_size"] == [32, 32]
    assert meta["true_class"] == ["cat"] * 4  # folder name is a class of the probe
    for c, col in zip(meta["columns"], result.columns, strict=True):
        assert len(c["maps"]) == 4
        for i, rel in enumerate(c["maps"]):
            np.testing.assert_array_equal(np.load(out / rel), col.maps[i])
    assert not (out / "gradcam.png").exists()  # computing draws nothing
    with Image.open(draw_gradcam(result, out)) as im:
        w, h = im.size
    assert 1.1 * w < h < 2.0 * w  # 4 rows x 3 columns
    # the report's reader gives back the same maps and pixels
    again = load_gradcam(meta, out)
    for col, back in zip(result.columns, again.columns, strict=True):
        np.testing.assert_array_equal(back.maps, col.maps)
        assert (back.name, back.predicted, back.explained) == (
            col.name,
            col.predicted,
            col.explained,
        )
    np.testing.assert_allclose(again.pixels, result.pixels, atol=1e-6)


def test_cli_end_to_end_writes_grid_and_maps(ckpts, demo_data, tmp_path, capsys):
    probed, _ = ckpts
    other = with_probe(
        tiny_checkpoint(tmp_path / "base2" / "final.pt", seed=3, depth=2),
        sorted(demo_data.class_names),
        seed=2,
    )
    out = tmp_path / "cam"
    argv = ["gradcam", str(probed), str(other), "--images", str(demo_data.val / "brick")]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out", str(out), "--batch-size", "3", "--target", "true"])
    assert e.value.code == 0
    assert "4 images x 2 checkpoints" in capsys.readouterr().out
    assert (out / "gradcam.png").is_file()
    assert len(list((out / "maps").rglob("*.npy"))) == 2 * 4
    cols = json.loads((out / "gradcam.json").read_text())["columns"]
    assert [c["name"] for c in cols] == ["fast/final", "base2/final"]
    assert cols[1]["explained"] == ["class brick"] * 4


def test_cli_missing_probe_is_one_line_exit_2(ckpts, demo_data, tmp_path, capsys):
    _, plain = ckpts
    with pytest.raises(SystemExit) as e:
        main(["gradcam", str(plain), "--data", str(demo_data.val), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("fastdino: error: ") and "has no probe head" in err


def test_similarity_targets_match_torch_cosine():
    emb, concept = torch.randn(3, 8), torch.randn(3, 8)
    got = torch.stack([t(e) for t, e in zip(similarity_targets(concept), emb, strict=True)])
    torch.testing.assert_close(got, torch.nn.functional.cosine_similarity(emb, concept))
    proj = similarity_targets(concept, "projection")[0](emb[0])
    torch.testing.assert_close(proj, emb[0] @ concept[0] / concept[0].norm())


# ---- several target layers (a head reading the last blocks' CLS) ----------------------------


def test_probe_layers_name_the_first_norm_of_every_block_the_head_reads():
    from fastdino_cli.eval.gradcam.spec import target_layers

    assert target_layers("probe", 4) == [f"blocks.-{k}.norm1" for k in (4, 3, 2, 1)]
    assert target_layers("probe", 1) == target_layers("probe", None) == ["blocks.-1.norm1"]
    assert target_layers("blocks.0.norm1, blocks.-1.norm1", 4) == [
        "blocks.0.norm1",
        "blocks.-1.norm1",
    ]
    with pytest.raises(ConfigError, match="names no layer"):
        target_layers(" , ", 4)


def _grad_cam_by_hand(model, vit, x, classes, layers, prefix=3):
    """Grad-CAM written out: per layer relu(sum_c mean_grad_c * act_c) on the patch grid,
    min-max scaled and resized (bilinear) to the input; the layers' maps averaged and scaled."""
    import cv2

    acts = {}
    hooks = [
        resolve_module(vit, name).register_forward_hook(
            lambda m, i, o, name=name: acts.__setitem__(name, o)
        )
        for name in layers
    ]
    try:
        with torch.enable_grad():
            xx = x.clone().requires_grad_(True)
            logits = model(xx)
            for o in acts.values():
                o.retain_grad()
            logits[torch.arange(len(x)), torch.tensor(classes)].sum().backward()
    finally:
        for h in hooks:
            h.remove()
    gh, gw = x.shape[-2] // 8, x.shape[-1] // 8
    per_layer = []
    for name in layers:
        a = acts[name][:, prefix:].detach().reshape(len(x), gh, gw, -1).numpy()
        g = acts[name].grad[:, prefix:].reshape(len(x), gh, gw, -1).numpy()
        cam = np.maximum((a * g.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)
        cam = cam - cam.min(axis=(1, 2), keepdims=True)
        cam = cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))
        per_layer.append(np.stack([cv2.resize(c, (x.shape[-1], x.shape[-2])) for c in cam]))
    mean = np.mean(per_layer, axis=0)
    mean -= mean.min(axis=(1, 2), keepdims=True)
    return mean / (1e-7 + mean.max(axis=(1, 2), keepdims=True))


def test_several_target_layers_average_the_per_layer_maps():
    """Against Grad-CAM computed by hand at each layer, averaged by the package's rule."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=3, num_heads=2,
        num_register_tokens=2, layerscale_init=None,
    )  # fmt: skip
    vit = build_vit(cfg).eval()
    model = nn.Sequential(vit, nn.Linear(32, 5)).requires_grad_(False)
    x = torch.randn(3, 3, 32, 48)
    layers = ["blocks.-3.norm1", "blocks.-2.norm1", "blocks.-1.norm1"]
    targets = class_targets([0, 2, 4])
    all3 = compute_cam(model, x, targets, backbone=vit, target_layer=layers)
    np.testing.assert_allclose(all3, _grad_cam_by_hand(model, vit, x, [0, 2, 4], layers), atol=1e-4)
    last = compute_cam(model, x, targets, backbone=vit, target_layer=layers[-1])
    np.testing.assert_allclose(
        last, _grad_cam_by_hand(model, vit, x, [0, 2, 4], layers[-1:]), atol=1e-4
    )
    assert np.abs(all3 - last).max() > 0.05  # the earlier blocks change the map


def test_classifier_precision_policy_is_fp32_for_gradients_and_restored():
    """A probe classifier predicting under bf16 autocast gives the fp32 map (the package cannot
    convert bf16 activations); its policy is back in place afterwards."""
    from fastdino_cli.eval.classifier import ProbeClassifier
    from fastdino_cli.eval.features import FP32, Precision

    vit = tiny_vit(regs=2)
    head = nn.Linear(64, 5)
    clf = ProbeClassifier(
        vit, head, n_last_blocks=2, avgpool=False, recipe=FeatureRecipe(37, 32),
        class_names=list("abcde"), precision=FP32,
    )  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    ref = compute_cam(clf, x, class_targets([0, 1]), backbone=vit, target_layer="blocks.-1.norm1")
    with torch.no_grad():
        fp32_logits = clf(x)
        policy = Precision(autocast="bfloat16", storage="float16")
        clf.precision = policy
        assert (clf(x) - fp32_logits).abs().max() > 0  # the prediction runs under the policy
    maps = compute_cam(clf, x, class_targets([0, 1]), backbone=vit, target_layer="blocks.-1.norm1")
    np.testing.assert_allclose(maps, ref, atol=1e-6)
    assert clf.precision is policy


def test_probe_layers_per_checkpoint_recorded_with_a_caveat(tmp_path, demo_data, capsys):
    """--layer probe on a head reading 4 blocks averages their maps; the default layer says
    what it leaves out."""
    classes = sorted(demo_data.class_names)
    path = tiny_checkpoint(tmp_path / "deep" / "final.pt", depth=4)
    g = torch.Generator().manual_seed(0)
    entry = make_probe_entry(
        weight=torch.randn(len(classes), 4 * 32, generator=g), bias=torch.zeros(len(classes)),
        n_last_blocks=4, avgpool=False, lr=0.01, recipe=FeatureRecipe(37, 32),
        class_names=classes, accuracy={}, protocol={},
    )  # fmt: skip
    save_probe_entry(path, entry)
    kw = dict(data=demo_data.val, per_class=1, device="cpu", progress=False)
    last = run_gradcam([path], **kw)
    assert "reads the CLS of its last 4 blocks" in capsys.readouterr().err
    probe = run_gradcam([path], target_layer="probe", out=tmp_path / "o", **kw)
    assert capsys.readouterr().err == ""
    assert last.columns[0].target_layers == ["blocks.-1.norm1"]
    assert probe.columns[0].target_layers == [f"blocks.-{k}.norm1" for k in (4, 3, 2, 1)]
    assert not np.allclose(probe.columns[0].maps, last.columns[0].maps, atol=1e-3)
    meta = json.loads((tmp_path / "o" / "gradcam.json").read_text())
    assert meta["target_layer"] == "probe"
    assert meta["columns"][0]["target_layers"] == probe.columns[0].target_layers
    draw_gradcam(probe, tmp_path / "o")
