"""The 19 ImageNet-C corruptions: shapes, determinism, severity ordering, exact small cases."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.blur import glass_offsets, glass_shuffle, glass_shuffle_loop
from fastdino_cli.eval.corruption.common import (
    apply_motion_blur,
    clipped_zoom,
    disk_kernel,
    gaussian,
    motion_kernel,
    plasma_fractal,
)
from fastdino_cli.eval.corruption.registry import (
    ALL,
    BENCHMARK,
    DETERMINISTIC,
    EXTRA,
    corrupt,
    corruption_rng,
    parse_corruptions,
    parse_severities,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """scikit-image's astronaut, 64 x 64."""
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.BICUBIC))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_registry_has_15_plus_4():
    assert len(BENCHMARK) == 15 and len(EXTRA) == 4 and len(set(ALL)) == 19
    assert set(EXTRA) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert parse_corruptions("noise,fog") == [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "fog",
    ]
    assert parse_corruptions("benchmark") == list(BENCHMARK)
    assert parse_severities("1-3,5") == [1, 2, 3, 5]
    with pytest.raises(DataError, match="did you mean 'frost'"):
        parse_corruptions("frots")
    with pytest.raises(DataError, match="severities are 1, 2, 3, 4 and 5"):
        parse_severities("0,6")


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_determinism(name, photo):
    # non-square input checks that nothing assumes 224 x 224 or square images
    img = photo[:, :48]
    for severity in (1, 5):
        a = corrupt(img, name, severity, np.random.default_rng(7))
        b = corrupt(img, name, severity, np.random.default_rng(7))
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), "same seed must give the same image"
        assert not np.array_equal(a, img), "a corruption must change the image"
    if name not in DETERMINISTIC:
        c = corrupt(img, name, 3, np.random.default_rng(1))
        d = corrupt(img, name, 3, np.random.default_rng(2))
        assert not np.array_equal(c, d), "different seeds must give different draws"


# Severity chains along which the original parameters strictly grow the damage. Some lists
# are not monotone by design: elastic s1-2 are large smooth warps and s3-5 fine jitter; saturate
# s1-2 desaturate and s3-5 oversaturate; glass s3 (3 passes, sigma 1) vs s4 (2 passes, 1.1),
# frost s3 vs s4 (only the image weight drops); snow s2/s3 swap on small images.
CHAINS: dict[str, list[tuple[int, ...]]] = {name: [(1, 2, 3, 4, 5)] for name in ALL}
CHAINS.update(
    elastic_transform=[(1, 2), (3, 4, 5)],
    saturate=[(1, 2), (3, 4, 5)],
    glass_blur=[(1, 2, 3, 5), (1, 2, 4, 5)],
    frost=[(1, 2, 3), (1, 2, 4, 5)],
    snow=[(1, 2, 4, 5), (1, 3, 4, 5)],
)


@pytest.mark.parametrize("name", ALL)
def test_severity_monotone_mean_absolute_change(name, photo):
    mad = {
        s: np.mean([_mad(corrupt(photo, name, s, np.random.default_rng(k)), photo) for k in (0, 1)])
        for s in (1, 2, 3, 4, 5)
    }
    for chain in CHAINS[name]:
        values = [mad[s] for s in chain]
        assert all(np.diff(values) > 0), f"{name}: {chain} -> {np.round(values, 2)}"


def test_brightness_hand_computed():
    # (200, 100, 50): V = 200/255; +0.1 keeps H and S, so every channel scales by (V+.1)/V
    img = np.tile(np.array([200, 100, 50], np.uint8), (8, 8, 1))
    out = corrupt(img, "brightness", 1, np.random.default_rng(0))
    scale = (200 / 255 + 0.1) / (200 / 255)  # 225.5 / 200
    expected = np.floor(np.array([200, 100, 50]) * scale)  # 225.5, 112.75, 56.375 -> truncated
    assert np.array_equal(out[0, 0], expected.astype(np.uint8))
    assert np.array_equal(out[0, 0], [225, 112, 56])


def test_contrast_hand_computed():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4] = 101  # channel mean 50.5; c = 0.4 -> 50.5 -/+ 20.2
    out = corrupt(img, "contrast", 1, np.random.default_rng(0))
    assert np.all(out[:4] == 70) and np.all(out[4:] == 30)  # 70.7 and 30.3, truncated


def test_saturate_hand_computed():
    # H and V fixed, S * 0.3: each channel becomes V - (V - c) * 0.3
    img = np.tile(np.array([200, 101, 51], np.uint8), (8, 8, 1))
    out = corrupt(img, "saturate", 1, np.random.default_rng(0))
    assert np.array_equal(out[0, 0], [200, 170, 155])  # 170.3, 155.3 truncated
    out5 = corrupt(img, "saturate", 5, np.random.default_rng(0))  # S*20+.2 clips to 1
    assert out5[0, 0, 0] in (199, 200) and out5[0, 0, 2] == 0


def test_pixelate_hand_computed():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    out = corrupt(img, "pixelate", 5, rng)  # 0.25: 16 -> 4 -> 16, 4 x 4 blocks of their mean
    # Pillow's BOX filter is separable: horizontal pass, round to uint8, vertical pass, round
    rows = np.floor(img.astype(np.float64).reshape(16, 4, 4, 3).mean(axis=2) + 0.5)
    blocks = np.floor(rows.reshape(4, 4, 4, 3).mean(axis=1) + 0.5)
    expected = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    assert np.array_equal(out, expected)  # upsampling by 4 with BOX copies each block value


def test_jpeg_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    for severity, quality in zip((1, 5), (25, 7), strict=True):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(corrupt(img, "jpeg_compression", severity, rng), expected)
    flat = np.full((16, 16, 3), 128, np.uint8)  # a flat image survives JPEG almost exactly
    assert np.abs(corrupt(flat, "jpeg_compression", 5, rng).astype(int) - 128).max() <= 1


def test_gaussian_kernel_hand_computed():
    impulse = np.zeros((21, 21))
    impulse[10, 10] = 1.0
    out = gaussian(impulse, 1.0)  # truncate 4 -> radius 4
    t = np.arange(-4, 5)
    k1 = np.exp(-(t**2) / 2.0)
    k1 /= k1.sum()
    expected = np.zeros_like(impulse)
    expected[6:15, 6:15] = np.outer(k1, k1)
    np.testing.assert_allclose(out, expected, atol=1e-12)


def test_defocus_kernel_hand_computed():
    k = disk_kernel(3, 0.1)  # 17 x 17 support; 29 lattice points with x^2 + y^2 <= 9
    assert k.shape == (17, 17)
    np.testing.assert_allclose(k[8, 8], 1 / 29, rtol=1e-6)
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-6)
    assert k[8, 8 + 3] > 0 and k[8, 8 + 4] < 1e-12  # radius 3 in, 4 out
    # radius 10 fills its 21 x 21 support, so the softening blur reflects mass back in at the
    # support's edge: the original's kernel sums to ~1.011, kept as is
    k10 = disk_kernel(10, 0.5)
    assert k10.shape == (21, 21) and 1.005 < k10.sum() < 1.02
    # a flat image stays flat where the disk fits its support (kernel sums to 1)
    flat = np.full((32, 32, 3), 100, np.uint8)
    assert np.abs(corrupt(flat, "defocus_blur", 3, None).astype(int) - 100).max() <= 1


def test_motion_kernel_is_imagemagick_ray():
    k = motion_kernel(2, 1.0, 0.0)  # width 5 samples to the right, one-sided Gaussian
    w = np.exp(-(np.arange(5) ** 2) / 2.0)
    w /= w.sum()
    assert k.shape == (9, 9)
    np.testing.assert_allclose(k[4, 4:], w)
    assert k.sum() == pytest.approx(1.0) and k[4, :4].sum() == 0
    k90 = motion_kernel(2, 1.0, 90.0)  # positive angle points down (image y axis)
    np.testing.assert_allclose(k90[4:, 4], w, atol=1e-12)


def test_motion_blur_matches_direct_sum():
    """The filter2D path equals ImageMagick's per-pixel sum with edge-replicated reads."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 15)).astype(np.uint8)
    radius, sigma, angle = 4, 2.0, 30.0
    width = 2 * radius + 1
    w = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    w /= w.sum()
    a = np.deg2rad(angle)
    expected = np.zeros(img.shape)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            for i in range(width):
                ox, oy = int(np.ceil(i * np.cos(a) - 0.5)), int(np.ceil(i * np.sin(a) - 0.5))
                yy, xx = min(max(y + oy, 0), 11), min(max(x + ox, 0), 14)
                expected[y, x] += w[i] * img[yy, xx]
    # ImageMagick Q16: nearest 16-bit quantum, then the 8-bit PNG truncates q / 257
    stored = np.floor(np.rint(expected * 257) / 257)
    assert np.array_equal(apply_motion_blur(img, radius, sigma, angle), stored)


def test_motion_blur_rounds_as_imagemagick_q16_by_hand():
    """Radius 1, sigma 1, angle 0: out[x] = w0 a[x] + w1 a[x+1] + w2 a[x+2] (edge replicated),
    w = (1, e^-1/2, e^-2) / (1 + e^-1/2 + e^-2) = (0.574097, 0.348207, 0.077696)."""
    row = np.array([[100, 102, 100, 100, 0, 255]], dtype=np.uint8)
    # sums:      100.6964, 101.1482, 92.2304, 77.2221, 108.6053, 255
    # rint:           101,      101,      92,      77,      109, 255   (the old rounding)
    # 257 * sum:  25879.0,  25995.1, 23703.2, 19846.1,  27911.6, 65535 -> rint, then // 257:
    expected = np.array([[100, 101, 92, 77, 108, 255]], dtype=np.uint8)
    assert np.array_equal(apply_motion_blur(row, 1, 1.0, 0.0), expected)
    flat = np.full((9, 11, 3), 100, np.uint8)  # sums a hair below 100 stay 100, not 99
    assert np.array_equal(apply_motion_blur(flat, 15, 5.0, 33.0), flat)


def motion_blur_input(channels: int) -> np.ndarray:
    """What ``fixtures/make_motion_blur_fixtures.py`` fed ImageMagick (keep them identical)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 48, channels), dtype=np.uint8)
    img[:, :16] = 100
    return img[..., 0] if channels == 1 else img


@pytest.mark.parametrize(
    ("name", "channels", "radius", "sigma", "angle"),
    [("rgb", 3, 10, 3, 30.0), ("grey", 1, 12, 8, -100.0)],
)
def test_motion_blur_equals_imagemagick_output(name, channels, radius, sigma, angle):
    """Bit-exact against ``convert in.png -motion-blur RxS+A out.png`` of ImageMagick 6.9.11
    Q16 (the Wand call of motion_blur and snow), stored in ``tests/fixtures``."""
    fixture = Path(__file__).parent / "fixtures" / f"motion_blur_im6q16_{name}.png"
    magick = np.asarray(Image.open(fixture))
    ours = apply_motion_blur(motion_blur_input(channels), radius, sigma, angle)
    assert ours.shape == magick.shape
    assert np.array_equal(ours, magick)


@pytest.mark.parametrize(("delta", "iterations"), [(1, 2), (2, 1), (4, 2)])
def test_glass_shuffle_fast_equals_loop(delta, iterations):
    rng = np.random.default_rng(delta)
    img = rng.integers(0, 256, (40, 33, 3)).astype(np.uint8)
    offsets = glass_offsets(img.shape[:2], delta, iterations, np.random.default_rng(9))
    fast = glass_shuffle(img, offsets, delta)
    assert np.array_equal(fast, glass_shuffle_loop(img, offsets, delta))
    assert (fast != img).any(axis=-1).mean() > 0.3  # it really moved pixels


@pytest.mark.parametrize("factor", [1.0, 1.07, 1.16, 1.31, 4.5])
def test_clipped_zoom_equals_scipy_zoom_then_trim(factor):
    from scipy import ndimage

    img = np.random.default_rng(0).random((37, 50, 3)).astype(np.float32)
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    full = ndimage.zoom(img[top : top + ch, left : left + cw], (factor, factor, 1), order=1)
    tt, tl = (full.shape[0] - h) // 2, (full.shape[1] - w) // 2
    np.testing.assert_array_equal(clipped_zoom(img, factor), full[tt : tt + h, tl : tl + w])


def test_plasma_fractal_range_and_seed():
    a = plasma_fractal(np.random.default_rng(0), 64, 2.0)
    b = plasma_fractal(np.random.default_rng(0), 64, 2.0)
    assert a.shape == (64, 64) and a.min() == 0 and a.max() == 1 and np.array_equal(a, b)


def test_corruption_rng_independent_of_order():
    a = corruption_rng(3, "fog", 2, 10).random(4)
    _ = corruption_rng(3, "fog", 2, 11).random(4)
    assert np.array_equal(a, corruption_rng(3, "fog", 2, 10).random(4))
    assert not np.array_equal(a, corruption_rng(3, "fog", 3, 10).random(4))


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="HxWx3 uint8"):
        corrupt(np.zeros((16, 16), np.uint8), "fog", 1, np.random.default_rng(0))
    with pytest.raises(DataError, match="severity 6"):
        corrupt(np.zeros((16, 16, 3), np.uint8), "fog", 6, np.random.default_rng(0))
    with pytest.raises(DataError, match="unknown corruption"):
        corrupt(np.zeros((16, 16, 3), np.uint8), "rain", 1, np.random.default_rng(0))


def test_large_image_frost_and_fog():
    img = np.full((300, 700, 3), 90, np.uint8)  # wider than the smallest frost photograph
    for name in ("frost", "fog"):
        out = corrupt(img, name, 3, np.random.default_rng(0))
        assert out.shape == img.shape and out.std() > 1
