"""Figures for Fourier heatmaps: one per checkpoint, side by side, radial profile; top-5 maps
in a second row beside the top-1 ones when the run measured them.

Drawing only; the numbers come from ``fastdino_cli.eval.fourier`` (a ``FourierRun``, or maps
read back with ``eval.fourier.result.load_heatmap``). :func:`draw_fourier_run` draws what
``fastdino fourier-heatmap`` shows. The side-by-side
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
from fastdino_cli.eval.fourier.result import FourierRun
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
    maps = {
        "error": result.error,
        "error_minus_clean": result.error_minus_clean,
        "error_top5": result.error_top5,
        "error_top5_minus_clean": result.error_top5_minus_clean,
    }
    if value not in maps:
        raise ValueError(f"unknown map {value!r}")
    if maps[value] is None:
        raise ValueError(f"this result has no {value} map")
    return maps[value]


def _has_top5(results: Sequence[FourierResult]) -> bool:
    return all(r.error_top5 is not None and r.clean_error_top5 is not None for r in results)


def _caption(result: FourierResult) -> str:
    win = f", window {result.window}" if result.window else ""
    return f"eps {result.eps:.3g}, {result.size} px{win}, {result.n_images} images"


def plot_heatmap(result: FourierResult, title: str, path: str | Path) -> Path:
    """Error (0..1, jet) and error minus clean error (symmetric, diverging) for one checkpoint;
    a second row with the top-5 maps when the result has them."""
    rows = [("top-1", result.error, result.clean_error)]
    if _has_top5([result]):
        rows.append(("top-5", result.error_top5, result.clean_error_top5))
    fig = Figure(figsize=(10, 4.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), 2))
    for (ax1, ax2), (kind, error, clean) in zip(axes, rows, strict=True):
        im = _draw(ax1, result, error, 0.0, 1.0, CMAP)
        ax1.set_title(f"{kind} error")
        fig.colorbar(im, ax=ax1, shrink=0.85)
        delta = error - clean
        lim = max(float(np.nanmax(np.abs(delta))), 1e-6)
        im = _draw(ax2, result, delta, -lim, lim, DIVERGING)
        ax2.set_title(f"{kind} error - clean {kind} error ({clean:.3f})")
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
    """One panel per checkpoint, one shared colour scale and a single colour bar per row.

    ``value`` is the top-1 map (``error`` or ``error_minus_clean``); when every result has the
    top-5 maps, a second row shows the same for top-5, on its own shared scale.
    """
    if value not in ("error", "error_minus_clean"):
        raise ValueError(f"unknown map {value!r}")
    suffix = value.removeprefix("error")
    rows = [("top-1", value, "clean_error")]
    if _has_top5(results):
        rows.append(("top-5", f"error_top5{suffix}", "clean_error_top5"))
    n = len(results)
    fig = Figure(figsize=(3.9 * n + 1.2, 4.2 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), n)).reshape(len(rows), n)
    for row_axes, (kind, key, clean_key) in zip(axes, rows, strict=True):
        maps = [_map(r, key) for r in results]
        vmin, vmax = shared_range(maps)
        im = None
        for ax, r, m, title in zip(row_axes, results, maps, titles, strict=True):
            im = _draw(ax, r, m, vmin, vmax, CMAP)
            ax.set_title(f"{title}\nclean {kind} error {getattr(r, clean_key):.3f}", fontsize=10)
        label = f"{kind} error" + (" - clean" if suffix else "")
        fig.colorbar(im, ax=list(row_axes), shrink=0.85, label=f"{label} (shared scale)")
    fig.suptitle(f"Fourier heatmap: {_caption(results[0])}")
    return save_figure(fig, path, dpi=120)


def plot_radial(results: Sequence[FourierResult], titles: Sequence[str], path: str | Path) -> Path:
    """Error against frequency radius, one line per checkpoint (dashed: its clean error); top-5
    as a dotted line of the same colour when the results have it."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    top5 = _has_top5(results)
    for i, (r, title) in enumerate(zip(results, titles, strict=True)):
        radii, prof = radial_profile(r)
        color = f"C{i % 10}"
        ax.plot(radii, prof, marker=".", color=color, label=f"{title} top-1" if top5 else title)
        ax.axhline(r.clean_error, color=color, linestyle="--", linewidth=0.8)
        if top5:
            radii5, prof5 = radial_profile(r, top5=True)
            ax.plot(radii5, prof5, marker=".", linestyle=":", color=color, label=f"{title} top-5")
    ax.set_xlabel("frequency radius (cycles/image)")
    ax.set_ylabel("top-1" + (" / top-5 (dotted)" if top5 else "") + " error (dashed: clean)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Radial profile: {_caption(results[0])}", fontsize=10)
    return save_figure(fig, path, dpi=120)


def draw_fourier_run(run: FourierRun) -> list[Path]:
    """``<label>/heatmap.png`` per checkpoint, ``side_by_side.png`` and (when the run asked for
    the radial profile) ``radial.png`` in the run's folder."""
    paths = [
        plot_heatmap(result, label, run.out / label / "heatmap.png")
        for label, result in zip(run.labels, run.results, strict=True)
    ]
    paths.append(plot_side_by_side(run.results, run.labels, run.out / "side_by_side.png"))
    if run.radial:
        paths.append(plot_radial(run.results, run.labels, run.out / "radial.png"))
    return paths
