"""ImageNet-C weather corruptions: snow, frost, fog, brightness (benchmark) and spatter (extra).

Brightness counts as weather, as in the original's corruption groups. Frost blends in one of
the original frost photographs, shipped in ``fastdino_cli/data/assets/frost/`` with their
Apache-2.0 notice.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.common import (
    apply_motion_blur,
    clipped_zoom,
    gaussian,
    param,
    plasma_fractal,
    to_uint8,
    to_unit,
)

# (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # (image w, frost w)
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # (strength, wibble decay)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
# (loc, scale, sigma, threshold, intensity, mud?)
SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
FROST_DIR = Path(__file__).resolve().parents[2] / "data" / "assets" / "frost"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@lru_cache(maxsize=len(FROST_FILES))
def frost_texture(index: int) -> np.ndarray:
    """Frost photograph ``index`` (0-based) as HxWx3 uint8 RGB, read the way the original did."""
    import cv2

    path = FROST_DIR / FROST_FILES[index]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"frost texture {path} is missing or unreadable; reinstall fastdino")
    return np.ascontiguousarray(bgr[..., ::-1])


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Snowflakes: thresholded zoomed noise, motion-blurred, added twice (once rotated 180)."""
    import cv2

    loc, scale, zoom, thr, radius, sigma, blend = param(SNOW, severity)
    x = to_unit(x, np.float32)
    h, w = x.shape[:2]
    layer = rng.normal(size=(h, w), loc=loc, scale=scale)
    layer = clipped_zoom(layer[..., None], zoom)
    layer[layer < thr] = 0
    layer_u8 = (np.clip(layer.squeeze(-1), 0, 1) * 255).astype(np.uint8)
    angle = rng.uniform(-135, -45)
    layer = apply_motion_blur(layer_u8, radius, sigma, angle) / 255.0
    layer = layer[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(h, w, 1)
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return to_uint8(x + layer + np.rot90(layer, k=2))


def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend with a random crop of one of the first five frost photographs.

    Images larger than a texture (the smallest is 527 x 350) get the texture upscaled
    (bicubic) just enough to crop from; the original only handled 224 x 224.
    """
    import cv2

    img_w, frost_w = param(FROST, severity)
    texture = frost_texture(int(rng.integers(5)))
    h, w = x.shape[:2]
    th, tw = texture.shape[:2]
    if th <= h or tw <= w:
        scale = max((h + 1) / th, (w + 1) / tw)
        size = (int(np.ceil(tw * scale)), int(np.ceil(th * scale)))
        texture = cv2.resize(texture, size, interpolation=cv2.INTER_CUBIC)
        th, tw = texture.shape[:2]
    top, left = int(rng.integers(0, th - h)), int(rng.integers(0, tw - w))
    crop = texture[top : top + h, left : left + w]
    out = img_w * np.asarray(x, dtype=np.float64) + frost_w * crop
    return np.clip(out, 0, 255).astype(np.uint8)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a plasma-fractal haze and rescale so the brightest value keeps its level.

    The fractal map is 256 x 256 as in the original, or the next power of two above the image.
    """
    strength, decay = param(FOG, severity)
    x = to_unit(x)
    h, w = x.shape[:2]
    mapsize = max(256, 1 << int(np.ceil(np.log2(max(h, w)))))
    max_val = x.max()
    x = x + strength * plasma_fractal(rng, mapsize, decay)[:h, :w][..., None]
    return to_uint8(x * max_val / (max_val + strength))


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value channel by c (clipped to 1)."""
    from skimage.color import hsv2rgb, rgb2hsv

    c = param(BRIGHTNESS, severity)
    hsv = rgb2hsv(to_unit(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return to_uint8(hsv2rgb(hsv))


def spatter(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops (severities 1-3, pale turquoise highlights) or mud splashes (4-5, brown)."""
    loc, scale, sigma, thr, intensity, mud = param(SPATTER, severity)
    x = to_unit(x, np.float32)
    liquid = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    liquid = gaussian(liquid, sigma)
    liquid[liquid < thr] = 0
    if not mud:
        return to_uint8(_water(x, liquid, intensity))
    m = gaussian(np.where(liquid > thr, 1, 0).astype(np.float32), intensity)
    m[m < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / 255.0 * m[..., None]
    return to_uint8(x * (1 - m[..., None]) + color)


def _water(x: np.ndarray, liquid: np.ndarray, intensity: float) -> np.ndarray:
    """Water drops: edge-distance shading of the liquid mask, added in pale turquoise."""
    import cv2

    liquid_u8 = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid_u8, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
    dist = cv2.filter2D(dist, cv2.CV_8U, emboss)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = liquid_u8 * dist
    peak = m.max()
    m = m / peak * intensity if peak > 0 else m
    color = np.array([175, 238, 238], dtype=np.float32) / 255.0
    return np.clip(x + m[..., None] * color, 0, 1)
