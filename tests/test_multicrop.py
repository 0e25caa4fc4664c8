"""Multi-crop strategies, noise patching, worker-side stage settings and the bad-file policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastdino_cli.config import CropsConfig, CurriculumConfig, NoisePatchingConfig, StageConfig
from fastdino_cli.data.images import scan_images
from fastdino_cli.data.masking import MultiCropCollate
from fastdino_cli.data.multicrop import (
    MultiCropDataset,
    MultiCropTransform,
    StepBatchSampler,
    noise_patch,
)
from fastdino_cli.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("strategy", ["original", "shared", "crop-resize", "crop"])
def test_shapes_for_every_strategy(strategy):
    cfg = CropsConfig(strategy=strategy, local_crops_number=3)
    tf = MultiCropTransform(cfg, global_size=24, local_size=12)
    glob, loc, sigma = tf(_image(), torch.Generator().manual_seed(0))
    assert [tuple(x.shape) for x in glob] == [(3, 24, 24)] * 2
    assert [tuple(x.shape) for x in loc] == [(3, 12, 12)] * 3
    assert sigma == -1.0 and all(x.dtype == torch.uint8 for x in glob + loc)
    assert all(x.is_contiguous() for x in glob + loc)  # stackable without another copy


def test_crop_strategy_never_rescales():
    img = _image(30, 36, seed=1)
    ref = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()
    cfg = CropsConfig(strategy="crop", local_crops_number=2)
    tf = MultiCropTransform(cfg, global_size=16, local_size=8)
    glob, loc, _ = tf(img, torch.Generator().manual_seed(5))
    for crop in glob + loc:
        pix = crop.float()  # 8-bit crops: the image's own pixels
        s = pix.shape[-1]
        windows = ref.unfold(1, s, 1).unfold(2, s, 1)  # (3, H-s+1, W-s+1, s, s)
        diff = (windows - pix[:, None, None]).abs().amax(dim=(0, 3, 4))
        assert float(diff.min()) == 0.0  # an exact native-resolution window


def test_shared_strategy_uses_one_photometric_draw():
    # a flat gray image: geometry is invisible, only photometric changes remain
    img = Image.new("RGB", (32, 32), (120, 90, 60))
    cfg = CropsConfig(strategy="shared", local_crops_number=2, blur_prob_local=0.0)
    tf = MultiCropTransform(cfg, global_size=16, local_size=16)
    glob, loc, _ = tf(img, torch.Generator().manual_seed(2))
    means = [x.float().mean(dim=(1, 2)) for x in glob + loc]
    assert all(torch.equal(m, means[0]) for m in means)
    cfg_o = CropsConfig(strategy="original", local_crops_number=2, color_jitter_prob=1.0)
    glob, loc, _ = MultiCropTransform(cfg_o, global_size=16, local_size=16)(
        img, torch.Generator().manual_seed(2)
    )
    means = [x.float().mean(dim=(1, 2)) for x in glob + loc]
    assert not all(torch.allclose(m, means[0], atol=0.5) for m in means)


def test_noise_patch_statistics():
    g = torch.Generator().manual_seed(0)
    img = torch.full((3, 30, 50), 128, dtype=torch.uint8)
    sides, sigmas = [], []
    for _ in range(250):
        out, info = noise_patch(img, 0.1, g)
        t, l, s = info["top"], info["left"], info["side"]
        assert 1 <= s <= 30 and 0 <= t <= 30 - s and 0 <= l <= 50 - s  # fully inside
        assert 0.0 <= info["sigma"] <= 0.1
        outside = torch.ones(30, 50, dtype=torch.bool)
        outside[t : t + s, l : l + s] = False
        assert torch.equal(out[:, outside], img[:, outside])  # untouched outside
        sides.append(s)
        sigmas.append(info["sigma"])
        if s >= 10 and info["sigma"] > 0.02:
            d = out[:, t : t + s, l : l + s].float() - 128
            assert abs(float(d.std()) / 255 - info["sigma"]) < 0.25 * info["sigma"] + 0.003
    assert min(sides) <= 3 and max(sides) >= 28 and 13 < np.mean(sides) < 18  # U{1..30}
    assert 0.04 < np.mean(sigmas) < 0.06  # U(0, 0.1)
    # clamping: a bright image with strong noise stays within [0, 255] and saturates
    bright = torch.full((3, 20, 20), 250, dtype=torch.uint8)
    hits = 0
    for _ in range(50):
        out, info = noise_patch(bright, 2.0, g)
        hits += int((out == 255).sum())
    assert hits > 0
    # probability 0 leaves the image alone
    out, info = noise_patch(img, 0.2, g, prob=0.0)
    assert not info["applied"] and torch.equal(out, img)


def _write_images(folder, n=6, size=24):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _image(size, size, seed=i).save(folder / f"img_{i}.png")


def _two_stage_curriculum():
    return CurriculumConfig(
        stages=[
            StageConfig(name="low", end=0.5, global_crops_size=16, local_crops_size=8),
            StageConfig(
                name="high",
                end=1.0,
                global_crops_size=24,
                local_crops_size=16,
                restart=True,
                noise_patching=NoisePatchingConfig(enabled=True, max_sigma=0.2),
            ),
        ]
    )


def test_workers_apply_the_stage_of_each_step(tmp_path):
    _write_images(tmp_path / "imgs")
    files = scan_images(tmp_path / "imgs")
    crops = CropsConfig(local_crops_number=2)
    ds = MultiCropDataset(files, crops, _two_stage_curriculum(), total_steps=6, seed=0)
    sampler = StepBatchSampler(len(files), 3, seed=0, start_step=0, end_step=6)
    col = MultiCropCollate(patch_size=8, mask_probability=0.5, ratio_min_max=(0.1, 0.5), seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=col, num_workers=1)
    seen = [
        (
            b.step,
            b.stage,
            b.global_crops.shape[-1],
            b.local_crops.shape[-1],
            b.masks.shape[1],
            bool((b.noise_sigmas >= 0).all()),
        )
        for b in loader
    ]
    assert seen == [
        (0, 0, 16, 8, 4, False),
        (1, 0, 16, 8, 4, False),
        (2, 0, 16, 8, 4, False),
        (3, 1, 24, 16, 9, True),
        (4, 1, 24, 16, 9, True),
        (5, 1, 24, 16, 9, True),
    ]


def test_sampler_order_is_a_pure_function_of_the_step():
    full = list(StepBatchSampler(10, 4, seed=1, start_step=0, end_step=6))
    tail = list(StepBatchSampler(10, 4, seed=1, start_step=3, end_step=6))
    assert full[3:] == tail
    # every data epoch is a permutation
    flat = [i for b in full for i, _ in b][:20]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    r0 = list(StepBatchSampler(10, 2, seed=1, start_step=0, end_step=2, rank=0, world_size=2))
    r1 = list(StepBatchSampler(10, 2, seed=1, start_step=0, end_step=2, rank=1, world_size=2))
    assert not set(i for b in r0 for i, _ in b) & set(i for b in r1 for i, _ in b)


def test_unreadable_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "mixed"
    _write_images(root, n=3)
    (root / "notes.jpg").write_text("this is not an image")
    (root / "empty.png").write_bytes(b"")
    good = (root / "img_0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    files = scan_images(root)
    assert len(files) == 6
    ds = MultiCropDataset(
        files,
        CropsConfig(local_crops_number=1, global_crops_size=16, local_crops_size=8),
        CurriculumConfig(),
        total_steps=1,
        seed=0,
    )
    skipped = set()
    for i in range(len(files)):
        sample = ds[(i, 0)]
        skipped.update(sample.skipped_files)
        assert sample.global_crops[0].shape == (3, 16, 16)
    assert sorted(p.split("/")[-1] for p in skipped) == ["empty.png", "notes.jpg", "truncated.png"]


def test_empty_or_unreadable_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    ds = MultiCropDataset(
        scan_images(tmp_path / "bad"), CropsConfig(), CurriculumConfig(), total_steps=1, seed=0
    )
    with pytest.raises(DataError, match="could be read"):
        ds[(0, 0)]
