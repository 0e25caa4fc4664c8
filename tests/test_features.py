"""Feature extraction: recipe defaults, layouts, one-line data errors, the on-disk cache."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from PIL import Image

from fastdino_cli import checkpoint as ck
from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import (
    default_recipe,
    eval_transform,
    extract_features,
    head_input,
    probe_features,
)
from fastdino_cli.eval.probe.run import run_probe
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


def _folder(root, classes, n=2, size=20):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), (i * 40, 10, 200)).save(root / c / f"{i}.png")
    return root


def test_default_recipe_follows_final_stage_and_flags():
    ckpt = {
        "config": {
            "curriculum": {"stages": [{"global_crops_size": 112}, {"global_crops_size": 224}]}
        },
        "arch": {"img_size": 224},
    }
    r = default_recipe(ckpt)
    assert (r.crop_size, r.resize_size) == (224, 256)
    assert default_recipe({"config": {}, "arch": {"img_size": 64}}).crop_size == 64
    assert default_recipe(ckpt, crop=96).resize_size == round(96 * 256 / 224)
    assert default_recipe(ckpt, resize=300, crop=100).resize_size == 300


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    recipe = default_recipe({"config": {}, "arch": {"img_size": 32}})
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    x01 = eval_transform(recipe, normalize=False)(img)
    assert x01.shape == (3, 32, 32) and torch.allclose(x01[0], torch.ones(32, 32))
    x = eval_transform(recipe)(img)
    assert x[0, 0, 0] == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


def test_head_input_layout():
    cls = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    pm = torch.full((2, 2), -1.0)
    assert torch.equal(head_input(cls, pm, 1, False), cls[:, 2])
    assert torch.equal(head_input(cls, pm, 2, True), torch.cat([cls[:, 1], cls[:, 2], pm], 1))


def test_probe_features_last_cls_is_the_backbone_cls(tmp_path):
    model, _ = ck.load_teacher_backbone(tiny_checkpoint(tmp_path / "m.pt"))
    x = torch.randn(2, 3, 32, 32)
    cls, pm = probe_features(model, x, 3)
    out = model.forward_features(x)
    assert cls.shape == (2, 3, 32) and pm.shape == (2, 32)
    torch.testing.assert_close(cls[:, -1], out.cls)
    torch.testing.assert_close(pm, out.patches.mean(1))


def test_unreadable_image_is_a_one_line_error(tmp_path, monkeypatch):
    _folder(tmp_path / "tr", ["a", "b"])
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tr" / "a" / "bad.png").write_bytes(b"not an image")
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    with pytest.raises(DataError, match=r"cannot read image .*bad.png"):
        run_probe([ckpt], tmp_path / "tr", tmp_path / "tr", ks=(1,), epochs=1)


def test_cache_hit_and_invalidation(tmp_path, demo_data, monkeypatch):
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "val"
    shutil.copytree(demo_data.val, data)
    folder = scan_labelled_folder(data)
    path = tiny_checkpoint(tmp_path / "m.pt", seed=1)

    def extract():
        model, ckpt = ck.load_teacher_backbone(path)
        return extract_features(model, scan_labelled_folder(data), default_recipe(ckpt), n_blocks=2)

    first = extract()
    assert not first.cached and first.cls.shape == (len(folder), 2, 32)
    again = extract()
    assert again.cached and torch.equal(again.cls, first.cls)
    # rewriting other entries (e.g. the probe head) keeps the key
    raw = ck.load(path)
    raw["probe"] = {"note": "x"}
    ck.save(raw, path)
    assert extract().cached
    # new weights at the same path: recomputed, different features
    tiny_checkpoint(path, seed=2)
    changed = extract()
    assert not changed.cached and not torch.allclose(changed.cls, first.cls)
    # touching a data file changes the data fingerprint
    some = next(p for p in sorted(data.rglob("*.png")))
    os.utime(some, ns=(some.stat().st_atime_ns, some.stat().st_mtime_ns + 10**9))
    assert not extract().cached
    # --no-cache neither reads nor writes
    model, ckpt = ck.load_teacher_backbone(path)
    fresh = extract_features(model, folder, default_recipe(ckpt), n_blocks=2, use_cache=False)
    assert not fresh.cached
