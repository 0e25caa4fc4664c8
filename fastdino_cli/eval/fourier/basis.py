"""Fourier error-sensitivity heatmaps (Yin et al., NeurIPS 2019, arXiv:1906.08988).

For an N x N image and a spatial frequency (i, j), U_ij is the real planar wave whose 2-D DFT
is supported only on the conjugate pair {(i, j), (-i, -j)}, scaled to unit L2 norm over the
N x N plane. Every evaluation image X becomes ``clamp(X + eps * r * U_ij, 0, 1)`` in [0, 1]
pixel space, before the classifier normalises it, with a sign r in {-1, +1} drawn per image and
per colour channel. The heatmap holds the classification error at each (i, j), with the zero
frequency at the centre. The top-5 error (the true class not among the five highest logits)
is counted on the same forward passes and mapped the same way, beside the top-1 map.

Why only half of the plane is evaluated: U_{-i,-j} is the same real wave as U_ij (the random
sign already covers its negation), so one basis per conjugate pair suffices; that is
N^2/2 + 2 bases for even N and (N^2 + 1)/2 for odd N, half of what the official implementation
evaluates. The other half of the map is filled by mirroring.

Conventions (documented deviations in brackets):

- basis phase: cosine, ``U[y, x] ~ cos(2 pi (u y + w x) / N)``, as an inverse real FFT of a real
  one-hot gives (gatheluck/FourierHeatmap); the official TF code uses a 45 degree phase shift.
- eps: the L2 norm of the perturbation per channel. The paper's ImageNet value is 15.7 at 224 px,
  i.e. a per-pixel RMS amplitude of 15.7 / 224 = 0.070 (peak ~0.099). [``default_eps(size)``
  scales eps linearly with the size so the per-pixel amplitude stays that of the paper.]
- signs: drawn from a generator keyed by (seed, u, w), so a frequency always sees the same signs
  whatever the window, the batch size or an interruption in between.
- the saved map is the full N x N plane (DC at index N // 2; for even N row/column 0 is the
  Nyquist frequency -N/2) or the centred K x K window.

The cost is n_bases x n_images forward passes; ``compute_fourier_heatmap`` puts many bases into
each forward batch and saves the per-frequency counts atomically to a state file every
``save_interval_s`` seconds (and when interrupted), so a killed run resumes where it stopped and
gives the same result as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastdino_cli import console
from fastdino_cli.errors import ConfigError
from fastdino_cli.fileio import atomic_write

PAPER_EPS = 15.7
PAPER_SIZE = 224
STATE_VERSION = 2  # 2: top-1 and top-5 counts

Classifier = Callable[[Tensor], Tensor]  # (B, 3, H, W) in [0, 1] -> logits (B, C)


def default_eps(size: int) -> float:
    """The paper's ImageNet norm (15.7 at 224 px) at ``size`` px: same per-pixel amplitude."""
    return PAPER_EPS * size / PAPER_SIZE


def signed_frequency(k: np.ndarray | int, n: int) -> np.ndarray:
    """DFT index -> signed frequency in cycles per image, as ``np.fft.fftfreq(n) * n``."""
    k = np.asarray(k)
    return np.where(k < (n + 1) // 2, k, k - n)


def check_window(n: int, window: int | None) -> None:
    """A window must be an odd K with 1 <= K <= N (centred on DC, symmetric)."""
    if window is None:
        return
    if window < 1 or window % 2 == 0 or window > n:
        raise ConfigError(
            f"--window {window} is invalid for size {n}: use an odd K between 1 and {n} "
            f"(e.g. 63 for the paper's low-frequency region), or no window for the full plane"
        )


def half_plane_frequencies(n: int, window: int | None = None) -> np.ndarray:
    """One DFT index (u, w) per conjugate pair, in the rFFT half-plane (w <= N // 2).

    Returns an int array of shape (F, 2); F = N^2/2 + 2 (even N) or (N^2 + 1)/2 (odd N) for the
    full plane, (K^2 + 1)/2 for a centred K x K window.
    """
    if n < 1:
        raise ConfigError(f"image size {n} must be at least 1")
    check_window(n, window)
    out = []
    for u in range(n):
        for w in range(n // 2 + 1):
            cu, cw = (-u) % n, (-w) % n
            if cw <= n // 2 and (cw, cu) < (w, u):  # the conjugate is also here and comes first
                continue
            out.append((u, w))
    freqs = np.asarray(out, dtype=np.int64).reshape(-1, 2)
    if window is not None:
        r = window // 2
        fy, fx = signed_frequency(freqs[:, 0], n), signed_frequency(freqs[:, 1], n)
        freqs = freqs[(np.abs(fy) <= r) & (np.abs(fx) <= r)]
    return freqs


def fourier_basis(
    freqs: np.ndarray, n: int, *, device: str | torch.device = "cpu", dtype=torch.float32
) -> Tensor:
    """Real unit-L2 planar waves ``cos(2 pi (u y + w x) / N)`` for each (u, w): (F, N, N)."""
    freqs_t = torch.as_tensor(np.asarray(freqs).reshape(-1, 2), dtype=torch.float64)
    grid = torch.arange(n, dtype=torch.float64)
    phase = (
        freqs_t[:, 0, None, None] * grid[None, :, None]
        + freqs_t[:, 1, None, None] * grid[None, None, :]
    )
    # reduce the phase modulo N before scaling so large indices keep full precision
    waves = torch.cos(2 * torch.pi * torch.remainder(phase, n) / n)
    waves = waves / waves.flatten(1).norm(dim=1)[:, None, None]
    return waves.to(device=device, dtype=dtype)


def perturbation_signs(seed: int, freq: tuple[int, int], n_images: int) -> np.ndarray:
    """Signs in {-1, +1} per image and channel for one frequency: (n_images, 3) float32."""
    rng = np.random.default_rng([seed, int(freq[0]), int(freq[1])])
    return (rng.integers(0, 2, size=(n_images, 3)) * 2 - 1).astype(np.float32)


def map_axis(n: int, window: int | None = None) -> np.ndarray:
    """Signed frequency of each row/column of a map (DC at the centre)."""
    if window is None:
        return np.arange(n) - n // 2
    r = window // 2
    return np.arange(-r, r + 1)


def mirror_to_plane(
    values: np.ndarray, freqs: np.ndarray, n: int, window: int | None = None
) -> np.ndarray:
    """Place one value per conjugate pair on both members, DC at the centre.

    Returns (N, N) for the full plane (``fftshift`` layout) or (K, K) for a window; entries not
    covered by ``freqs`` are NaN.
    """
    plane = np.full((n, n), np.nan, dtype=np.float64)
    u, w = freqs[:, 0], freqs[:, 1]
    plane[u, w] = values
    plane[(-u) % n, (-w) % n] = values
    plane = np.fft.fftshift(plane)
    if window is None:
        return plane
    c, r = n // 2, window // 2
    return plane[c - r : c + r + 1, c - r : c + r + 1]


@dataclass
class FourierResult:
    """One checkpoint's heatmap; maps have DC at the centre, rows = vertical frequency."""

    error: np.ndarray  # (N, N) or (K, K): top-1 error per frequency
    clean_error: float
    per_frequency: np.ndarray  # (F,) error per evaluated half-plane frequency
    freqs: np.ndarray  # (F, 2) DFT indices (u, w)
    axis: np.ndarray  # signed frequency of each map row/column
    eps: float
    size: int
    window: int | None
    seed: int
    n_images: int
    error_top5: np.ndarray | None = None  # the same map for the top-5 error (None: not read)
    clean_error_top5: float | None = None
    per_frequency_top5: np.ndarray | None = None

    @property
    def error_minus_clean(self) -> np.ndarray:
        return self.error - self.clean_error

    @property
    def error_top5_minus_clean(self) -> np.ndarray | None:
        if self.error_top5 is None or self.clean_error_top5 is None:
            return None
        return self.error_top5 - self.clean_error_top5


def radial_profile(result: FourierResult, *, top5: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean error over rings of integer frequency radius: (radii, mean error per radius);
    ``top5`` for the top-5 map."""
    error = result.error_top5 if top5 else result.error
    if error is None:
        raise ValueError("this result has no top-5 map")
    fy, fx = np.meshgrid(result.axis, result.axis, indexing="ij")
    radius = np.rint(np.hypot(fy, fx)).astype(np.int64)
    valid = ~np.isnan(error)
    radii = np.unique(radius[valid])
    means = np.array([error[valid & (radius == r)].mean() for r in radii])
    return radii, means


def images_digest(images: Tensor, labels: Tensor) -> str:
    """A short hash of the exact evaluation set, part of the resume key."""
    h = hashlib.blake2b(digest_size=12)
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_state(
    path: Path, key: str, wrong: np.ndarray, done: np.ndarray, clean: np.ndarray
) -> None:
    """Write the partial counts atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda f: np.savez(f, key=np.array(key), wrong=wrong, done=done, clean=clean),
    )


def _load_state(path: Path, key: str, n_freqs: int):
    """Counts from a previous run with the same key, or None (absent, stale or unreadable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or z["wrong"].shape != (n_freqs, 2):
                return None
            return z["wrong"].copy(), z["done"].copy(), z["clean"].astype(np.int64)
    except (OSError, ValueError, KeyError):
        return None


def _progress(enabled: bool, description: str, total: int, completed: int):
    """A bar in the house style with ETA on a terminal (``console.Bar``), otherwise None."""
    if not enabled or not sys.stderr.isatty():
        return None
    return console.Bar(description, total, completed=completed, unit="perturbed images").start()


@torch.inference_mode()
def _count_wrong(classify: Classifier, x: Tensor, labels: Tensor) -> Tensor:
    """(B, 2) int64: top-1 wrong (argmax), top-5 wrong (top-k with k = min(5, classes))."""
    logits = classify(x)
    top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    wrong1 = logits.argmax(dim=-1) != labels
    wrong5 = ~(top == labels[:, None]).any(dim=-1)
    return torch.stack([wrong1, wrong5], dim=-1).to(torch.int64)


def compute_fourier_heatmap(
    classify: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | None = None,
    window: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    state_path: str | Path | None = None,
    identity: Mapping[str, Any] | None = None,
    save_interval_s: float = 30.0,
    progress: bool = False,
    description: str = "fourier",
) -> FourierResult:
    """Error of ``classify`` on ``images`` perturbed by each Fourier basis of the half-plane.

    Args:
        classify: maps (B, 3, N, N) images in [0, 1] to logits (B, C); it normalises itself.
        images: (M, 3, N, N) float in [0, 1], on the device ``classify`` runs on.
        labels: (M,) int64 true classes.
        eps: L2 norm of the perturbation per channel; ``default_eps(N)`` when None.
        window: odd K for the centred K x K low-frequency window, None for the full plane.
        seed: keys the random signs (see ``perturbation_signs``).
        batch_size: perturbed images per forward pass (bases x images are packed together).
        state_path: npz file holding partial counts; an existing one with the same key resumes.
        identity: extra plain data (checkpoint hash, probe) that must match to resume.
        save_interval_s: seconds between state saves (0 saves after every chunk).
        progress: show a rich progress bar with ETA when stderr is a terminal.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ConfigError(f"images must be (M, 3, N, N), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    m, n = images.shape[0], images.shape[-1]
    if m == 0:
        raise ConfigError("no evaluation images: the Fourier heatmap needs at least one")
    eps = default_eps(n) if eps is None else float(eps)
    freqs = half_plane_frequencies(n, window)
    labels = labels.to(images.device)
    key = json.dumps(
        {
            "version": STATE_VERSION,
            "eps": eps,
            "size": n,
            "window": window,
            "seed": seed,
            "images": images_digest(images, labels),
            "identity": dict(identity or {}),
        },
        sort_keys=True,
        default=str,
    )
    path = Path(state_path) if state_path is not None else None
    state = _load_state(path, key, len(freqs)) if path is not None else None
    if state is not None:
        wrong, done, clean_wrong = state
    else:
        wrong = np.zeros((len(freqs), 2), dtype=np.int64)  # top-1, top-5
        done = np.zeros(len(freqs), dtype=bool)
        clean_wrong = np.full(2, -1, dtype=np.int64)
    if clean_wrong[0] < 0:
        clean_wrong = sum(
            _count_wrong(classify, images[i : i + batch_size], labels[i : i + batch_size])
            .sum(dim=0)
            .cpu()
            .numpy()
            for i in range(0, m, batch_size)
        )

    per_chunk = max(1, batch_size // m)  # bases per forward pass when all images fit
    img_chunk = min(m, batch_size)
    todo = np.flatnonzero(~done)
    bar = _progress(progress, description, len(freqs) * m, int(done.sum()) * m)
    last_save = time.monotonic()
    try:
        for start in range(0, len(todo), per_chunk):
            idx = todo[start : start + per_chunk]
            basis = fourier_basis(freqs[idx], n, device=images.device, dtype=images.dtype)
            signs = np.stack([perturbation_signs(seed, freqs[i], m) for i in idx])
            signs_t = torch.from_numpy(signs).to(device=images.device, dtype=images.dtype)
            counts = torch.zeros(len(idx), 2, dtype=torch.int64, device=images.device)
            for i0 in range(0, m, img_chunk):
                x = images[i0 : i0 + img_chunk]
                s = signs_t[:, i0 : i0 + img_chunk]  # (F, I, 3)
                delta = eps * s[..., None, None] * basis[:, None, None]  # (F, I, 3, N, N)
                xt = (x[None] + delta).clamp_(0, 1).flatten(0, 1)
                y = labels[i0 : i0 + img_chunk].repeat(len(idx))
                counts += _count_wrong(classify, xt, y).view(len(idx), -1, 2).sum(dim=1)
            wrong[idx] = counts.cpu().numpy()
            done[idx] = True
            if bar is not None:
                bar.advance(len(idx) * m)
            if path is not None and time.monotonic() - last_save >= save_interval_s:
                _save_state(path, key, wrong, done, clean_wrong)
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.stop()
        if path is not None:
            _save_state(path, key, wrong, done, clean_wrong)

    per_freq, per_freq5 = wrong[:, 0] / m, wrong[:, 1] / m
    return FourierResult(
        error=mirror_to_plane(per_freq, freqs, n, window),
        clean_error=int(clean_wrong[0]) / m,
        per_frequency=per_freq,
        freqs=freqs,
        axis=map_axis(n, window),
        eps=eps,
        size=n,
        window=window,
        seed=seed,
        n_images=m,
        error_top5=mirror_to_plane(per_freq5, freqs, n, window),
        clean_error_top5=int(clean_wrong[1]) / m,
        per_frequency_top5=per_freq5,
    )
