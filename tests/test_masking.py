"""Block masks, stratified ratios, token weights and the collate function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdino_cli.data import masking
from fastdino_cli.data.masking import (
    BlockMaskGenerator,
    CropSample,
    MultiCropCollate,
    block_mask_cap,
    stratified_masks,
    token_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_block_mask_reaches_target_without_exceeding_much():
    gen = BlockMaskGenerator(14, 14)
    rng = np.random.default_rng(0)
    for target in (10, 40, 90):
        m = gen(target, rng)
        assert m.shape == (14, 14) and m.dtype == bool
        assert target * 0.6 <= m.sum() <= target


def test_block_mask_cap_is_the_reference_integer_arithmetic():
    # DINOv2 train.py: max_num_patches = 0.5 * img_size // patch_size * img_size // patch_size
    assert block_mask_cap(112, 16) == 21  # 56.0 // 16 = 3.0; 3.0 * 112 = 336; 336 // 16 = 21
    assert block_mask_cap(224, 16) == 98  # 112 // 16 = 7; 7 * 224 = 1568; 1568 // 16 = 98
    assert block_mask_cap(224, 14) == 128  # 112 // 14 = 8; 8 * 224 // 14 = 128
    assert block_mask_cap(98, 14) == 21
    assert block_mask_cap(111, 16) == 20  # 55.5 // 16 = 3; 333 // 16 = 20 (border dropped)
    assert block_mask_cap(8, 8) == 0  # below two patch rows the reference masks nothing
    assert BlockMaskGenerator(7, 7).max_num_patches == 21  # not int(0.5 * 49) = 24
    assert BlockMaskGenerator(14, 14).max_num_patches == 98


def test_collate_caps_blocks_by_the_crop_size(monkeypatch):
    seen = {}
    real = masking.stratified_masks

    def spy(*args, **kwargs):
        seen.update(grid=args[1], cap=kwargs["max_block_patches"])
        return real(*args, **kwargs)

    monkeypatch.setattr(masking, "stratified_masks", spy)
    col = MultiCropCollate(patch_size=16, mask_probability=0.5, ratio_min_max=(0.1, 0.5), seed=0)
    col([_sample(0, i, g=112, l=48, n_local=1) for i in range(2)])
    assert seen == {"grid": (7, 7), "cap": 21}


def test_stratified_ratios_fraction_and_shuffle():
    rng = np.random.default_rng(1)
    n, grid = 40, (10, 10)
    masks = stratified_masks(n, grid, mask_probability=0.5, ratio_min_max=(0.1, 0.5), rng=rng)
    assert masks.shape == (n, 100)
    counts = masks.sum(1)
    masked = counts > 0
    assert int(masked.sum()) == 20  # int(40 * 0.5) images get a mask
    # stratified: sorted ratios spread over [0.1, 0.5], one per stratum (block masks undershoot)
    ratios = sorted((counts[masked].float() / 100).tolist())
    assert ratios[-1] <= 0.5 and ratios[0] < 0.2 and ratios[-1] > 0.35
    assert not bool(masked[:20].all())  # shuffled, not the first half


def test_token_weights_are_one_over_masked_count_of_each_image():
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    w = token_weights(masks)
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.25, 0.25, 0.25, 0.25]))
    # per masked image the weights sum to 1
    assert float(w.sum()) == 2.0


def _sample(step, b_idx, g=16, l=8, n_local=3):
    glob = [torch.full((3, g, g), float(10 * c + b_idx)) for c in range(2)]
    loc = [torch.full((3, l, l), float(100 + 10 * c + b_idx)) for c in range(n_local)]
    return CropSample(glob, loc, step, 0, -1.0)


def test_collate_is_crop_major_and_masks_follow_crop_size():
    col = MultiCropCollate(patch_size=4, mask_probability=0.5, ratio_min_max=(0.1, 0.5), seed=3)
    batch = col([_sample(5, i) for i in range(4)])
    assert batch.global_crops.shape == (8, 3, 16, 16)
    assert batch.local_crops.shape == (12, 3, 8, 8)
    # crop-major: crop 1 of images 0..3, then crop 2 of images 0..3
    assert batch.global_crops[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert batch.local_crops[4:8, 0, 0, 0].tolist() == [110, 111, 112, 113]
    assert batch.masks.shape == (8, 16) and batch.n_local == 3 and batch.batch_size == 4
    # same step -> same masks; another step -> another draw
    again = col([_sample(5, i) for i in range(4)])
    assert torch.equal(again.masks, batch.masks)
    bigger = col([_sample(6, i, g=32) for i in range(4)])
    assert bigger.masks.shape == (8, 64)


def test_uint8_crops_cross_as_bytes_and_are_normalised_on_the_device():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    kw = {"patch_size": 4, "mask_probability": 0.5, "ratio_min_max": (0.1, 0.5), "seed": 3}
    g = torch.Generator().manual_seed(0)

    def sample(i):
        glob = [torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g) for _ in "ab"]
        return CropSample(glob, [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)], 5, 0, -1.0)

    samples = [sample(i) for i in range(2)]
    batch = MultiCropCollate(**kw, mean=mean, std=std)(samples)
    assert batch.global_crops.dtype == torch.uint8 and batch.normalisation.shape == (2, 3)
    moved = batch.to("cpu")
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for raw, out in (
        (batch.global_crops, moved.global_crops),
        (batch.local_crops, moved.local_crops),
    ):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, (raw.float() / 255 - m) / s, atol=1e-5, rtol=0)
    assert torch.equal(moved.mask_index, batch.mask_index)
    with pytest.raises(ValueError, match="normalisation"):
        MultiCropCollate(**kw)(samples).to("cpu")  # no mean / std for 8-bit crops
    floats = MultiCropCollate(**kw)([_sample(5, i) for i in range(2)])  # float crops: as they are
    assert floats.normalisation is None and torch.equal(
        floats.to("cpu").global_crops, floats.global_crops
    )
