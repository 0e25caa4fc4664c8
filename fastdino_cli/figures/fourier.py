"""Figures for Fourier heatmaps: one per checkpoint, side by side, radial profile.

Drawing only; the numbers come from ``fastdino_cli.eval.fourier.basis``. The side-by-side
figure uses ONE colour scale for every checkpoint (and one colour bar), because comparing colours
across panels with different scales is how frequency-bias figures mislead. Uses matplotlib's
object-oriented API (``Figure``) so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fastdino_cli.eval.fourier.basis import FourierResult, radial_profile
from fastdino_cli.fileio import save_figure

CMAP = "jet"  # the colour map of Yin et al. and both public implementations
DIVERGING = "RdBu_r"


def _extent(result: FourierResult) -> tuple[float, float, float, float]:
    lo, hi = float(result.axis[0]) - 0.5, float(result.axis[-1]) + 0.5
    return (lo, hi, hi, lo)  # rows go down: negative vertical frequencies at the top


def _draw(ax, result: FourierResult, values: np.ndarray, vmin: float, vmax: float, cmap: str):
    im = ax.imshow(
        values,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=_extent(result),
        interpolation="nearest",
    )
    ax.set_xlabel("horizontal frequency (cycles/image)")
    ax.set_ylabel("vertical frequency (cycles/image)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return im


def _map(result: FourierResult, value: str) -> np.ndarray:
    if value == "error":
        return result.error
    if value == "error_minus_clean":
        return result.error_minus_clean
    raise ValueError(f"unknown map {value!r}")


def _caption(result: FourierResult) -> str:
    win = f", window {result.window}" if result.window else ""
    return f"eps {result.eps:.3g}, {result.size} px{win}, {result.n_images} images"


def plot_heatmap(result: FourierResult, title: str, path: str | Path) -> Path:
    """Error (0..1, jet) and error minus clean error (symmetric, diverging) for one checkpoint."""
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    im = _draw(ax1, result, result.error, 0.0, 1.0, CMAP)
    ax1.set_title("top-1 error")
    fig.colorbar(im, ax=ax1, shrink=0.85)
    delta = result.error_minus_clean
    lim = max(float(np.nanmax(np.abs(delta))), 1e-6)
    im = _draw(ax2, result, delta, -lim, lim, DIVERGING)
    ax2.set_title(f"error - clean error ({result.clean_error:.3f})")
    fig.colorbar(im, ax=ax2, shrink=0.85)
    fig.suptitle(f"{title}: {_caption(result)}")
    return save_figure(fig, path, dpi=120)


def shared_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """The one colour scale of a side-by-side figure: min and max over every map."""
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5e-3, hi + 0.5e-3
    return lo, hi


def plot_side_by_side(
    results: Sequence[FourierResult],
    titles: Sequence[str],
    path: str | Path,
    *,
    value: str = "error",
) -> Path:
    """One panel per checkpoint, one shared colour scale and a single colour bar."""
    maps = [_map(r, value) for r in results]
    vmin, vmax = shared_range(maps)
    n = len(results)
    fig = Figure(figsize=(3.9 * n + 1.2, 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    im = None
    for ax, r, m, title in zip(axes, results, maps, titles, strict=True):
        im = _draw(ax, r, m, vmin, vmax, CMAP)
        ax.set_title(f"{title}\nclean error {r.clean_error:.3f}", fontsize=10)
    label = "top-1 error" if value == "error" else "error - clean error"
    fig.colorbar(im, ax=list(axes), shrink=0.85, label=f"{label} (shared scale)")
    fig.suptitle(f"Fourier heatmap: {_caption(results[0])}")
    return save_figure(fig, path, dpi=120)


def plot_radial(results: Sequence[FourierResult], titles: Sequence[str], path: str | Path) -> Path:
    """Error against frequency radius, one line per checkpoint (dashed: its clean error)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (r, title) in enumerate(zip(results, titles, strict=True)):
        radii, prof = radial_profile(r)
        color = f"C{i % 10}"
        ax.plot(radii, prof, marker=".", color=color, label=title)
        ax.axhline(r.clean_error, color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("frequency radius (cycles/image)")
    ax.set_ylabel("top-1 error (dashed: clean)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Radial profile: {_caption(results[0])}", fontsize=10)
    return save_figure(fig, path, dpi=120)
