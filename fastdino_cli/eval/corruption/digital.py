"""ImageNet-C digital corruptions: contrast, elastic, pixelate, JPEG; saturate (extra)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from fastdino_cli.eval.corruption.common import gaussian, param, to_uint8, to_unit

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
# (alpha, sigma, affine max shift) in pixels; 244 (sic) is the original's constant
ELASTIC = (
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
)
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # (S times, S plus)


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Pull every channel towards its mean: (x - mean) * c + mean."""
    c = param(CONTRAST, severity)
    x = to_unit(x)
    means = x.mean(axis=(0, 1), keepdims=True)
    return to_uint8((x - means) * c + means)


def saturate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the HSV saturation: S * a + b (clipped to [0, 1])."""
    from skimage.color import hsv2rgb, rgb2hsv

    times, plus = param(SATURATE, severity)
    hsv = rgb2hsv(to_unit(x))
    hsv[..., 1] = np.clip(hsv[..., 1] * times + plus, 0, 1)
    return to_uint8(hsv2rgb(hsv))


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Box-downsample by the factor, then box-upsample back (Pillow BOX both ways)."""
    c = param(PIXELATE, severity)
    h, w = x.shape[:2]
    img = Image.fromarray(np.asarray(x))
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Encode and decode as JPEG at a low quality (Pillow, default 4:2:0 subsampling)."""
    quality = param(JPEG_QUALITY, severity)
    buf = io.BytesIO()
    Image.fromarray(np.asarray(x)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB"))


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp, then a smooth random displacement field (bilinear, reflected).

    The three affine anchor points follow the original, which passes (row, column) centres as
    OpenCV (x, y) points; on square images that makes no difference.
    """
    import cv2

    alpha, sigma, affine = param(ELASTIC, severity)
    image = to_unit(x, np.float32)
    h, w = image.shape[:2]
    centre = np.float32((h, w)) // 2
    side = min(h, w) // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    matrix = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    field = [
        (
            gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
        ).astype(np.float32)
        for _ in range(2)
    ]
    dx, dy = field
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + dy, xx + dx])
    out = np.stack(
        [
            ndimage.map_coordinates(image[..., k], coords, order=1, mode="reflect")
            for k in range(image.shape[2])
        ],
        axis=-1,
    )
    return to_uint8(out)
