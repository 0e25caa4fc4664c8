"""ImageNet-C noise corruptions: Gaussian, shot, impulse (benchmark) and speckle (extra).

Each function maps an HxWx3 uint8 RGB image, a severity 1..5 and a ``np.random.Generator`` to
an image of the same shape and dtype. Parameters per severity are the original ones
(``reference/eval_anchors.md`` A1).
"""

from __future__ import annotations

import numpy as np

from fastdino_cli.eval.corruption.common import param, to_uint8, to_unit

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_NOISE = (60, 25, 12, 5, 3)
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)
SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive white noise of standard deviation sigma (in [0, 1] units), per channel."""
    sigma = param(GAUSSIAN_NOISE, severity)
    x = to_unit(x)
    return to_uint8(x + rng.normal(size=x.shape, scale=sigma))


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Photon noise: Poisson(x * c) / c; fewer photons (smaller c) is noisier."""
    photons = param(SHOT_NOISE, severity)
    x = to_unit(x)
    return to_uint8(rng.poisson(x * photons) / photons)


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise per channel value, as ``skimage.util.random_noise(mode='s&p')``.

    A fraction ``amount`` of the values is replaced, half by 1 (salt) and half by 0 (pepper).
    Written out here because scikit-image >= 0.19 seeds its own generator, which cannot be
    driven by the caller's (``reference/eval_anchors.md`` A2).
    """
    amount = param(IMPULSE_NOISE, severity)
    x = to_unit(x)
    flipped = rng.random(x.shape) < amount
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return to_uint8(out)


def speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: x + x * N(0, sigma)."""
    sigma = param(SPECKLE_NOISE, severity)
    x = to_unit(x)
    return to_uint8(x + x * rng.normal(size=x.shape, scale=sigma))
