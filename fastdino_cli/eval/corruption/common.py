"""Building blocks shared by the ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019).

The corruption functions reproduce the original generation script (hendrycks/robustness,
``ImageNet-C/create_c/make_imagenet_c.py``) on today's numpy/scipy/OpenCV/Pillow. Conventions
kept from the original, because they decide the exact pixel values of the released data:

* images are processed as floats in [0, 1] and returned as ``clip(x, 0, 1) * 255``; the
  original then stores ``np.uint8(result)``, which *truncates*, so :func:`to_uint8` truncates too;
* all sizes and radii are in pixels as in the original, which was written for 224 x 224 crops.
  Other sizes get the same per-pixel strength (not the same strength relative to the image);
* every random draw comes from an explicit ``np.random.Generator`` (the original used the global
  ``np.random`` state, so the *distribution* is reproduced, not the released random streams).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fastdino_cli.errors import DataError

SEVERITIES = (1, 2, 3, 4, 5)


def check_image(x: np.ndarray) -> np.ndarray:
    """Validate an HxWx3 uint8 RGB array (what every corruption takes)."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 3 or x.dtype != np.uint8:
        raise DataError(
            f"corruptions take HxWx3 uint8 RGB images, got shape {x.shape} dtype {x.dtype}; "
            "convert with np.asarray(pil_image.convert('RGB'))"
        )
    if min(x.shape[:2]) < 8:
        raise DataError(f"image of {x.shape[1]}x{x.shape[0]} px is too small; use at least 8 px")
    return x


def param(table: tuple, severity: int):
    """The parameter of ``severity`` (1..5) in a per-severity table."""
    if severity not in SEVERITIES:
        raise DataError(f"severity {severity!r} is not one of 1, 2, 3, 4, 5")
    return table[severity - 1]


def to_unit(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """uint8 [0, 255] -> float [0, 1] (float64 unless the original used float32)."""
    return np.asarray(x, dtype=dtype) / dtype(255.0)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 the way the original stored it: ``np.uint8(clip(x, 0, 1) * 255)``."""
    return (np.clip(x01, 0, 1) * 255).astype(np.uint8)


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0):
    """``skimage.filters.gaussian`` as the original called it: per channel, no range change."""
    sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """Zoom into the centre by ``zoom_factor`` (bilinear) and crop back to the input size.

    The original zooms the central crop with ``scipy.ndimage.zoom(order=1)`` and trims the
    result. Here only the kept window is interpolated, with the same coordinate map as
    ``zoom`` (``in = out * (n_in - 1) / (n_out - 1)``), which gives identical values at about
    half the cost (``tests/test_corruptions.py`` checks against ``zoom``). The original used
    the height for both axes (square crops only); each axis uses its own size here.
    """
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / zoom_factor)), int(np.ceil(w / zoom_factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top : top + ch, left : left + cw]
    zh, zw = int(round(ch * zoom_factor)), int(round(cw * zoom_factor))  # zoom's output shape
    trim_top, trim_left = (zh - h) // 2, (zw - w) // 2
    sy, sx = (ch - 1) / (zh - 1), (cw - 1) / (zw - 1)
    planes = crop[..., None] if img.ndim == 2 else crop
    out = np.empty((h, w, planes.shape[2]), dtype=img.dtype)
    for k in range(planes.shape[2]):
        out[..., k] = ndimage.affine_transform(
            planes[..., k],
            [sy, sx],
            offset=[trim_top * sy, trim_left * sx],
            output_shape=(h, w),
            order=1,
        )
    return out[..., 0] if img.ndim == 2 else out


def disk_kernel(radius: int, alias_blur: float) -> np.ndarray:
    """Defocus kernel: a normalised aliased disk, softened by a small Gaussian (OpenCV).

    Radii up to 8 use a 17 x 17 support and a 3 x 3 softening window, larger radii a
    (2r+1)^2 support and a 5 x 5 window, as in the original. Where the disk touches the edge
    of its support (radius 8 and 10), OpenCV's reflected border folds some softening mass back
    in, so those kernels sum to slightly more than 1 (1.011 at radius 10), as in the original.
    """
    import cv2

    if radius <= 8:
        coords = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        coords = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    xx, yy = np.meshgrid(coords, coords)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
    """A 2-D correlation kernel equivalent to ImageMagick's ``MotionBlurImage``.

    ImageMagick takes ``width = 2 * ceil(radius) + 1`` samples along a ray from the pixel, at
    offsets ``(round(i cos a), round(i sin a))`` (x right, y down) for ``i = 0 .. width-1``, and
    weights them with a one-sided Gaussian ``exp(-i^2 / (2 sigma^2))`` normalised to sum 1.
    Here the same samples are accumulated into a square kernel (coinciding offsets add up), so
    ``cv2.filter2D`` with edge replication (ImageMagick's default virtual pixels) gives the same
    weighted sum; :func:`apply_motion_blur` then rounds it the way ImageMagick Q16 does.
    """
    width = int(2 * np.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    weights = np.exp(-(i**2) / (2.0 * sigma**2))
    weights /= weights.sum()
    rad = np.deg2rad(angle)
    # ImageMagick: ceil(i * cos / hypot - 0.5) with hypot == 1 after normalisation.
    off_x = np.ceil(i * np.cos(rad) - 0.5).astype(int)
    off_y = np.ceil(i * np.sin(rad) - 0.5).astype(int)
    half = int(max(np.abs(off_x).max(), np.abs(off_y).max()))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float64)
    np.add.at(kernel, (off_y + half, off_x + half), weights)
    return kernel


def apply_motion_blur(x_u8: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """Motion-blur a uint8 image (HxW or HxWxC) and store it as ImageMagick Q16 + PNG do.

    The original's Wand call reads the 8-bit PNG into 16-bit quanta (``v * 257``), rounds the
    weighted sum to the nearest quantum, and writes the 8-bit PNG by truncating ``q / 257``:
    so ``floor(rint(257 * f) / 257)``, which is ``floor(f)`` except within ``0.5 / 257`` below
    an integer (a flat region stays flat). ``rint(f)`` put 49% of the values one grey level
    higher. Checked bit-exact against ImageMagick 6.9.11-60 Q16 (``tests/fixtures``).
    """
    import cv2

    kernel = motion_kernel(radius, sigma, angle)
    out = cv2.filter2D(
        x_u8.astype(np.float64), -1, kernel, borderType=cv2.BORDER_REPLICATE, delta=0.0
    )
    quanta = np.clip(np.rint(out * 257.0), 0, 65535).astype(np.int64)
    return (quanta // 257).astype(np.uint8)


def plasma_fractal(rng: np.random.Generator, mapsize: int = 256, wibbledecay: float = 3.0):
    """Diamond-square plasma fractal in [0, 1] (the fog texture), ``mapsize`` a power of two."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = np.empty((mapsize, mapsize), dtype=np.float64)
    grid[0, 0] = 0.0
    step = mapsize
    wibble = 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        # squares: centre of each square from its four corners
        corners = grid[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        grid[half:mapsize:step, half:mapsize:step] = wibbled_mean(square)
        # diamonds: edge midpoints from the neighbouring centres and corners
        centres = grid[half:mapsize:step, half:mapsize:step]
        corners = grid[0:mapsize:step, 0:mapsize:step]
        top = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        grid[0:mapsize:step, half:mapsize:step] = wibbled_mean(top)
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        grid[half:mapsize:step, 0:mapsize:step] = wibbled_mean(left)
        step //= 2
        wibble /= wibbledecay
    grid -= grid.min()
    return grid / grid.max()
