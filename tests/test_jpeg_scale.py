"""Reduced-scale JPEG decoding (``data/jpeg_scale.py``, ``images.load_rgb(path, spec)``): the
bound, Pillow's choice, crop fidelity.

Measured crop fidelity (8 skimage photographs at 500x375, JPEG q90, 20 crop boxes each, same box
in normalised coordinates in both paths, bicubic antialiased resize): PSNR of fast vs exact
crops, mean 45.7 dB / min 36.2 dB for 112 px global crops and mean 49.2 dB / min 36.1 dB for
48 px local crops. The test asserts mean >= 40 dB and min >= 32 dB.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from fastdino_cli.config import CropsConfig, CurriculumConfig, StageConfig, resolve_config
from fastdino_cli.data.images import UnreadableImage, load_rgb
from fastdino_cli.data.jpeg_scale import (
    DecodeSpec,
    decoded_size,
    draft_request,
    min_crop_side,
    reduction,
    spec_for_stage,
)
from fastdino_cli.data.multicrop import MultiCropDataset, random_resized_crop_box

STAGE1 = DecodeSpec(crops=((112, 1.0), (48, 0.32)))
STAGE2 = DecodeSpec(crops=((224, 1.0), (96, 0.32)))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list:
    """skimage photographs resized to 500x375 and saved as JPEG quality 90."""
    import skimage.data

    root = tmp_path_factory.mktemp("jpegs")
    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        img = img.resize((500, 375), Image.BICUBIC)
        path = root / f"{name}.jpg"
        img.save(path, quality=90)
        out.append(path)
    return out


def test_bound_hand_computed():
    # 500x375, stage 1: L(1.0) = min(sqrt(187500 * 3/4), 375) = 375 -> 375/112 = 3.35;
    # local: sqrt(0.32 * 187500 * 3/4) = 212.1 -> /48 = 4.42; min 3.35 -> f = 2
    assert min_crop_side(375, 500, 1.0) == pytest.approx(375.0)
    assert min_crop_side(375, 500, 0.32) == pytest.approx(math.sqrt(0.32 * 187500 * 0.75))
    assert reduction(375, 500, STAGE1) == 2
    assert reduction(375, 500, STAGE2) == 1  # 375 / 224 = 1.67
    # 2000x1500: 1500/112 = 13.4, sqrt(.32*3e6*.75)/48 = 17.7 -> 8 (the largest libjpeg offers)
    assert reduction(1500, 2000, STAGE1) == 8
    # 1000x750: 750/112 = 6.7 -> 4; stage 2: 750/224 = 3.35 -> 2
    assert reduction(750, 1000, STAGE1) == 4 and reduction(750, 1000, STAGE2) == 2
    # the local crop can be the binding constraint: 48 px local at s<=0.05 of 1000x750
    tight_local = DecodeSpec(crops=((112, 1.0), (48, 0.05)))
    side = math.sqrt(0.05 * 750000 * 0.75)  # 167.7 -> /48 = 3.49 -> 2
    assert side / 48 < 4 and reduction(750, 1000, tight_local) == 2
    # small images are never reduced; disabled specs never reduce
    assert reduction(100, 120, STAGE1) == 1
    assert reduction(1500, 2000, DecodeSpec(crops=STAGE1.crops, enabled=False)) == 1


@pytest.mark.parametrize("seed", range(3))
def test_largest_crops_never_fall_under_their_size(seed):
    """Sample real RandomResizedCrop boxes at the largest scale: short side / f >= size."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(60, 3000, size=2))
        f = reduction(h, w, STAGE1)
        for size, scale in STAGE1.crops:
            top, left, ch, cw = random_resized_crop_box(h, w, (scale, scale), g)
            if f > 1:  # +1: the box's integer rounding
                assert min(ch, cw) / f + 1 >= size, (h, w, f, size, ch, cw)


@pytest.mark.parametrize(
    ("h", "w"), [(375, 500), (500, 375), (301, 457), (777, 1001), (1500, 2000)]
)
def test_pillow_draft_picks_exactly_the_factor(tmp_path, h, w):
    arr = np.random.default_rng(0).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    path = tmp_path / "x.jpg"
    Image.fromarray(arr).save(path, quality=90)
    for f in (2, 4, 8):
        with Image.open(path) as img:
            img.draft("RGB", draft_request(h, w, f))
            img.load()
            assert (img.height, img.width) == decoded_size(h, w, f), f
    out = load_rgb(path, STAGE1)
    assert (out.height, out.width) == decoded_size(h, w, reduction(h, w, STAGE1))
    assert load_rgb(path, None).size == (w, h)


def test_non_jpeg_and_unreadable(tmp_path):
    png = tmp_path / "x.png"
    Image.new("L", (1000, 750), 128).save(png)
    out = load_rgb(png, STAGE1)
    assert out.size == (1000, 750) and out.mode == "RGB"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UnreadableImage, match="bad.jpg"):
        load_rgb(bad, STAGE1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() / 255 - b.float() / 255) ** 2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@pytest.mark.slow
def test_fast_crops_stay_close_to_exact_crops(jpegs):
    """Same box in normalised coordinates (snapped to multiples of f so it maps exactly)."""
    g = torch.Generator().manual_seed(0)
    bicubic = TF.InterpolationMode.BICUBIC
    for size, scale in ((112, (0.32, 1.0)), (48, (0.05, 0.32))):
        values = []
        for path in jpegs:
            exact = TF.pil_to_tensor(load_rgb(path, None))
            fast = TF.pil_to_tensor(load_rgb(path, STAGE1))
            f = exact.shape[-1] // fast.shape[-1]
            assert f == 2 and fast.shape[-2] == math.ceil(exact.shape[-2] / 2)
            for _ in range(8):
                box = random_resized_crop_box(exact.shape[1], exact.shape[2], scale, g)
                t, left, ch, cw = (v // f * f for v in box)
                a = TF.resized_crop(exact, t, left, ch, cw, [size, size], bicubic, antialias=True)
                b = TF.resized_crop(
                    fast, t // f, left // f, ch // f, cw // f, [size, size], bicubic, antialias=True
                )
                values.append(_psnr(a, b))
        assert np.mean(values) >= 40.0, (size, np.mean(values))
        assert min(values) >= 32.0, (size, min(values))


def test_stage_specs_and_dataset_wiring(jpegs):
    """Stage 1 decodes at 1/2, stage 2 (noise patching on) at full scale; the setting turns it
    off; the dataset builds the stage's crop sizes from the reduced image."""
    cfg = resolve_config("vits16-in100", None, [])
    crops = cfg.crops.model_copy(update={"local_crops_number": 2})
    ds = MultiCropDataset(jpegs, crops, cfg.curriculum, total_steps=100, seed=0)
    s1, s2 = ds.decode_specs
    assert s1.enabled and s1.crops == ((112, crops.global_crops_scale[1]), (48, 0.32))
    assert reduction(375, 500, s1) == 2
    assert not s2.enabled  # noise patching: full-scale decode
    off = MultiCropDataset(jpegs, crops, cfg.curriculum, total_steps=100, seed=0, fast_decode=False)
    assert not any(s.enabled for s in off.decode_specs)
    sample = ds[(0, 0)]
    assert [tuple(c.shape) for c in sample.global_crops] == [(3, 112, 112)] * 2
    assert [tuple(c.shape) for c in sample.local_crops] == [(3, 48, 48)] * 2
    assert sample.stage == 0
    late = ds[(0, 99)]
    assert late.stage == 1 and tuple(late.global_crops[0].shape) == (3, 224, 224)


def test_crop_strategy_never_reduces():
    crops = CropsConfig(strategy="crop", global_crops_size=112, local_crops_size=48)
    curriculum = CurriculumConfig(stages=[StageConfig(end=1.0, global_crops_size=112)])
    ds = MultiCropDataset([], crops, curriculum, total_steps=10, seed=0)
    assert not ds.decode_specs[0].enabled
    assert spec_for_stage(ds.transforms[0], fast_decode=True) == ds.decode_specs[0]
    default = MultiCropDataset(
        [], crops.model_copy(update={"strategy": "original"}), curriculum, total_steps=10, seed=0
    )
    assert default.decode_specs[0].enabled
