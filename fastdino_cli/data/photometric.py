"""Photometric augmentations of one crop in OpenCV/NumPy: same pixels, a fraction of the time.

Why: a FastDINOv2 stage-1 sample is 2 crops of 112 px and 8 of 48 px. Through torchvision's
tensor functionals, the DINOv2 photometric pipeline (colour jitter in random order, grayscale,
Gaussian blur, solarize) took ~60% of a loader worker's time per sample, most of it in the
HSV round trip of the hue jitter and in the blur's depthwise convolution, where tensor dispatch
overhead dominates on such small images. OpenCV's SIMD colour conversion and separable Gaussian
filter do the same arithmetic 5-10x faster (``benchmarks/data_pipeline.py``).

Same definitions as torchvision (images HWC float32 in [0, 1]), checked against it within 1e-5
op by op, and within one 8-bit level for whole chains, in ``tests/test_photometric.py``:

    brightness b:  b x, clamped
    contrast c:    c x + (1 - c) mean(gray(x)), clamped (one mean per image)
    saturation s:  s x + (1 - s) gray(x), clamped (per pixel)
    hue h:         RGB -> HSV, hue + h turns (mod 1), HSV -> RGB
    gray:          0.2989 R + 0.587 G + 0.114 B on the three channels
    blur sigma:    Gaussian, ``k`` taps on [-(k-1)/2, (k-1)/2], reflect padding (no edge repeat)
    solarize t:    x >= t  ->  1 - x

Brightness, contrast and saturation are each one 3x4 affine colour transform (``cv2.transform``).
The parameters come from ``multicrop._draw_photometric`` unchanged (same generator, same order):
samples stay pure functions of (seed, step, index). OpenCV's thread pool is left alone
(``cv2.setNumThreads`` in forked loader workers can deadlock); these per-crop calls are too
small to be split across threads anyway.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from fastdino_cli.config import CropsConfig

GRAY = np.array([0.2989, 0.587, 0.114], dtype=np.float32)
_EYE = np.eye(3, dtype=np.float32)


def _affine(x: np.ndarray, m: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """``m @ rgb + offset`` per pixel, clamped to [0, 1]."""
    mat = np.concatenate([m, np.full((3, 1), offset, dtype=np.float32)], axis=1)
    out = cv2.transform(x, mat)
    return np.clip(out, 0.0, 1.0, out=out)


def brightness(x: np.ndarray, f: float) -> np.ndarray:
    return _affine(x, f * _EYE)


def contrast(x: np.ndarray, f: float) -> np.ndarray:
    mean = float(np.dot(np.asarray(cv2.mean(x)[:3], dtype=np.float64), GRAY))
    return _affine(x, f * _EYE, (1.0 - f) * mean)


def saturation(x: np.ndarray, f: float) -> np.ndarray:
    return _affine(x, f * _EYE + (1.0 - f) * np.tile(GRAY, (3, 1)))


def hue(x: np.ndarray, shift: float) -> np.ndarray:
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # float input: H in degrees [0, 360)
    h = hsv[..., 0]
    h += 360.0 * shift
    np.mod(h, 360.0, out=h)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def grayscale(x: np.ndarray) -> np.ndarray:
    return cv2.transform(x, np.tile(GRAY, (3, 1)))


def gaussian_blur(x: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    k = (kernel_size, kernel_size)
    return cv2.GaussianBlur(x, k, sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def solarize(x: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(x >= threshold, 1.0 - x, x).astype(np.float32, copy=False)


_JITTER = (brightness, contrast, saturation, hue)


def apply_photometric_hwc(x: np.ndarray, params: dict, cfg: CropsConfig) -> np.ndarray:
    """Apply one crop's drawn parameters to ``x`` (h, w, 3) float32 in [0, 1]."""
    if params["jitter"] is not None:
        for i in params["jitter"]["order"]:
            x = _JITTER[i](x, params["jitter"]["factors"][i])
    if params["gray"]:
        x = grayscale(x)
    if params["blur"] is not None:
        x = gaussian_blur(x, params["blur"], cfg.blur_kernel_size)
    if params["solarize"]:
        x = solarize(x, cfg.solarize_threshold / 255.0)
    return x


def augment_crop(crop: Tensor, params: dict | None, cfg: CropsConfig) -> Tensor:
    """uint8 (3, h, w) crop -> photometric (if ``params``) -> uint8 (3, h, w), contiguous.

    The ops run in float32 on [0, 1] between one conversion in and one rounding out (the
    reference's PIL pipeline keeps 8-bit pixels too, rounding after every op). Normalisation is
    left to the device (``normalise``): workers, shared memory, pinning and the copy to the GPU
    then move a quarter of the bytes of float crops, and the worker skips two float passes.
    """
    if params is None:
        return crop.contiguous()
    x = np.multiply(crop.permute(1, 2, 0).numpy(), np.float32(1.0 / 255.0), dtype=np.float32)
    x = apply_photometric_hwc(np.ascontiguousarray(x), params, cfg)
    out = np.empty(x.shape, dtype=np.uint8)
    cv2.convertScaleAbs(x, out, alpha=255.0)  # round to nearest, saturate to [0, 255]
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def normalisation_affine(mean, std) -> Tensor:
    """(2, 3) float32: per-channel scale ``1 / (255 std)`` and offset ``-mean / std``."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    return torch.stack([1.0 / (255.0 * s), -m / s]).to(torch.float32)


def normalise(crops: Tensor, affine: Tensor) -> Tensor:
    """uint8 (N, 3, h, w) -> float32 ``(x / 255 - mean) / std``, on the crops' device (one
    fused multiply-add; ``affine`` from ``normalisation_affine``, already on that device)."""
    scale, offset = affine[0].view(1, 3, 1, 1), affine[1].view(1, 3, 1, 1)
    return torch.addcmul(offset, crops.to(torch.float32), scale)
