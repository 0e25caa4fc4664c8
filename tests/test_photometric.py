"""OpenCV photometric ops (``data/photometric.py``) against torchvision's, op by op and chained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from fastdino_cli.config import CropsConfig
from fastdino_cli.data import photometric as P
from fastdino_cli.data.multicrop import MultiCropTransform, _draw_photometric
from tests.photometric_reference import apply_photometric_torchvision


def _pair(seed: int, size: int = 40) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (3, size, size + 3), dtype=torch.uint8, generator=g).float() / 255
    return x, np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def _close(t: torch.Tensor, a: np.ndarray, atol: float = 2e-6) -> None:
    assert a.dtype == np.float32 and a.shape == tuple(t.permute(1, 2, 0).shape)
    np.testing.assert_allclose(a, t.permute(1, 2, 0).numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("f", [0.0, 0.6, 1.0, 1.4])
def test_jitter_ops_match_torchvision(f):
    x, a = _pair(0)
    _close(TF.adjust_brightness(x, f), P.brightness(a, f))
    _close(TF.adjust_contrast(x, f), P.contrast(a, f))
    _close(TF.adjust_saturation(x, f), P.saturation(a, f))


@pytest.mark.parametrize("h", [-0.5, -0.1, 0.0, 0.05, 0.5])
def test_hue_matches_torchvision(h):
    x, a = _pair(1)
    _close(TF.adjust_hue(x, h), P.hue(a, h))


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_gray_solarize_match_torchvision(sigma):
    x, a = _pair(2)
    _close(TF.gaussian_blur(x, [9, 9], [sigma, sigma]), P.gaussian_blur(a, sigma, 9))
    _close(TF.rgb_to_grayscale(x, num_output_channels=3), P.grayscale(a))
    _close(TF.solarize(x, 128 / 255), P.solarize(a, 128 / 255))


@pytest.mark.slow
def test_drawn_pipeline_matches_torchvision_reference():
    """Full chains with drawn parameters against the torchvision reference rounded to 8 bits.

    The output is the nearest 8-bit level of the float result: within one level of the
    reference rounded the same way (the float results agree within 1e-5, so only values within
    that of a half level round apart). Solarize is a threshold: a pixel within float rounding
    of it may flip (1 - x vs x), so a handful of pixels are allowed a large difference.
    """
    cfg = CropsConfig()
    g = torch.Generator().manual_seed(0)
    flipped, total = 0, 0
    for size in (16, 48, 112):
        for _ in range(12):
            crop = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
            params = _draw_photometric(cfg, g, 0.5, 0.5)
            ref = (apply_photometric_torchvision(crop.float() / 255, params, cfg) * 255).round()
            out = P.augment_crop(crop, params, cfg)
            assert out.shape == ref.shape and out.dtype == torch.uint8 and out.is_contiguous()
            diff = (out.float() - ref).abs()
            flipped += int((diff > 1).sum())
            total += diff.numel()
            if not params["solarize"]:
                assert diff.max() <= 1, params
            assert float((diff > 0).float().mean()) < 0.01  # almost every pixel is exact
    assert flipped / total < 1e-3


def test_no_params_returns_the_crop_and_the_device_normalises():
    cfg = CropsConfig()
    crop = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    assert torch.equal(P.augment_crop(crop, None, cfg), crop)
    batch = torch.stack([crop, 255 - crop])
    out = P.normalise(batch, P.normalisation_affine(cfg.mean, cfg.std))
    m, s = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    ref = (batch.double() / 255 - m.double()) / s.double()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_transform_is_deterministic_per_generator():
    cfg = CropsConfig(local_crops_number=3)
    t = MultiCropTransform(cfg, global_size=32, local_size=16)
    img = torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8)
    a = t(img, torch.Generator().manual_seed(5))
    b = t(img, torch.Generator().manual_seed(5))
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(x, y)
