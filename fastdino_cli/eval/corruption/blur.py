"""ImageNet-C blur corruptions: defocus, glass, motion, zoom (benchmark) and Gaussian (extra).

Glass blur dominates the cost of the original script (~80 % of all time: a Python loop over
every pixel). :func:`glass_shuffle` reproduces that loop's output exactly for the same random
draws, with a handful of vectorised gathers instead (see its docstring); :func:`glass_shuffle_loop`
is the direct port kept for the equality test and the benchmark.
"""

from __future__ import annotations

import numpy as np

from fastdino_cli.eval.corruption.common import (
    apply_motion_blur,
    clipped_zoom,
    disk_kernel,
    gaussian,
    param,
    to_uint8,
    to_unit,
)

DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # (disk radius, alias sigma)
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, delta, iters
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # ImageMagick (radius, sigma)
ZOOM_BLUR = (
    np.arange(1, 1.11, 0.01),
    np.arange(1, 1.16, 0.01),
    np.arange(1, 1.21, 0.02),
    np.arange(1, 1.26, 0.02),
    np.arange(1, 1.31, 0.03),
)
GAUSSIAN_BLUR = (1, 2, 3, 4, 6)


def gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of standard deviation sigma pixels (edges replicated, truncated at 4 sigma)."""
    sigma = param(GAUSSIAN_BLUR, severity)
    return to_uint8(gaussian(to_unit(x), sigma))


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Convolution with a disk (out-of-focus lens), OpenCV's reflect-101 border."""
    import cv2

    radius, alias = param(DEFOCUS_BLUR, severity)
    kernel = disk_kernel(radius, alias)
    return to_uint8(cv2.filter2D(to_unit(x), -1, kernel))


def glass_offsets(
    shape: tuple[int, int], max_delta: int, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """All random displacements of the glass shuffle, drawn up front.

    Shape ``(iterations, n_rows, n_cols, 2)`` holding ``(dx, dy)`` in ``[-delta, delta)`` for the
    pixels the loop visits (rows ``H-delta .. delta+1`` and columns ``W-delta .. delta+1``,
    descending, exactly the original's ``range(224 - delta, delta, -1)``).
    """
    h, w = shape
    n_rows, n_cols = max(h - 2 * max_delta, 0), max(w - 2 * max_delta, 0)
    return rng.integers(-max_delta, max_delta, size=(iterations, n_rows, n_cols, 2))


def glass_shuffle_loop(x: np.ndarray, offsets: np.ndarray, max_delta: int) -> np.ndarray:
    """The original pixel loop, ported directly (slow; the reference for :func:`glass_shuffle`).

    The original's "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on numpy *views*, so
    after the first assignment the second one writes ``x[h', w']`` back onto itself: each step
    really copies ``x[h', w']`` into ``x[h, w]``. This port keeps that statement as written.
    """
    x = x.copy()
    h, w = x.shape[:2]
    for it in range(offsets.shape[0]):
        for i, row in enumerate(range(h - max_delta, max_delta, -1)):
            for j, col in enumerate(range(w - max_delta, max_delta, -1)):
                dx, dy = offsets[it, i, j]
                row2, col2 = row + dy, col + dx
                x[row, col], x[row2, col2] = x[row2, col2], x[row, col]
    return x


def glass_shuffle(x: np.ndarray, offsets: np.ndarray, max_delta: int) -> np.ndarray:
    """The same result as :func:`glass_shuffle_loop`, vectorised over the whole image.

    Within one pass every visited pixel p is written exactly once, ``x[p] <- x[src(p)]``, in the
    loop's order (rows then columns, both descending). If ``src(p)`` was visited earlier in the
    pass, p receives ``src(p)``'s *final* value, else ``src(p)``'s value from before the pass. So
    the final value of p is the pre-pass value at the end of the chain
    ``p -> src(p) -> src(src(p)) ...`` followed while the next pixel was visited earlier. The
    chain strictly goes back in visiting order, so it ends; pointer doubling
    (``ptr <- ptr[ptr]``) finds every chain end in O(log length) vectorised gathers.
    """
    h, w = x.shape[:2]
    n_iter, n_rows, n_cols = offsets.shape[:3]
    if n_rows == 0 or n_cols == 0:
        return x.copy()
    rows = np.arange(h - max_delta, max_delta, -1)  # visiting order, descending
    cols = np.arange(w - max_delta, max_delta, -1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    # visiting rank of every pixel; pixels never visited get -1 (never "visited earlier")
    rank = np.full((h, w), -1, dtype=np.int64)
    rank[rr, cc] = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    rank = rank.ravel()
    p = (rr * w + cc).ravel()
    flat = x.reshape(h * w, -1).copy()
    for it in range(n_iter):
        src = ((rr + offsets[it, ..., 1]) * w + (cc + offsets[it, ..., 0])).ravel()
        earlier = (rank[src] >= 0) & (rank[src] < rank[p])
        # ptr: next pixel in the chain (itself at a chain end); leaf: where the value comes from
        ptr = np.arange(h * w)
        leaf = np.arange(h * w)
        ptr[p[earlier]] = src[earlier]
        leaf[p[~earlier]] = src[~earlier]
        while True:
            nxt = ptr[ptr]
            if np.array_equal(nxt, ptr):
                break
            ptr = nxt
        flat = flat[leaf[ptr]]
    return flat.reshape(x.shape)


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, shuffle pixels locally (frosted glass), blur again."""
    sigma, delta, iterations = param(GLASS_BLUR, severity)
    blurred = (gaussian(to_unit(x), sigma) * 255).astype(np.uint8)
    offsets = glass_offsets(x.shape[:2], delta, iterations, rng)
    shuffled = glass_shuffle(blurred, offsets, delta)
    return to_uint8(gaussian(shuffled / 255.0, sigma))


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick-style motion blur along a random angle in [-45, 45) degrees."""
    radius, sigma = param(MOTION_BLUR, severity)
    angle = rng.uniform(-45, 45)
    return apply_motion_blur(np.asarray(x), radius, sigma, angle)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of the image and its centre zooms by each factor (radial blur)."""
    factors = param(ZOOM_BLUR, severity)
    x = to_unit(x, np.float32)
    out = np.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor)
    return to_uint8((x + out) / (len(factors) + 1))
