"""The two figures of ``fastdino curate``, drawn from its stored results.

- ``plot_retrievals``: one row per query image (one per class where there are several), the
  query first, then its nearest pool images after deduplication with their cosine; the ones
  below ``--min-similarity`` are dimmed (they were not retrieved).
- ``plot_similarity_histogram``: each pool image's cosine to its nearest other pool image, and to
  its nearest query / evaluation image, with the deduplication thresholds marked; where the
  near-duplicate bump separates from the bulk is where a threshold belongs.

Bare ``Figure`` + Agg canvas (no pyplot state); files are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastdino_cli.data.images import UnreadableImage, load_rgb
from fastdino_cli.data.jpeg_scale import DecodeSpec
from fastdino_cli.fileio import save_figure


@dataclass
class RetrievalRow:
    """A query image, its class, and its nearest pool images with their cosine."""

    query: Path
    label: str
    neighbours: Sequence[tuple[Path, float]]


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    FigureCanvasAgg(fig)
    return save_figure(fig, path, dpi=dpi)


def _thumb(path: Path, size: int = 96) -> np.ndarray:
    try:
        img = load_rgb(path, DecodeSpec(crops=((size, 1.0),)))  # a JPEG decodes reduced
    except UnreadableImage:
        return np.full((size, size, 3), 200, np.uint8)
    img.thumbnail((size, size))
    return np.asarray(img)


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_retrievals(
    rows: Sequence[RetrievalRow],
    path: str | Path,
    *,
    min_similarity: float | None = None,
    cell_inches: float = 1.1,
    dpi: int = 100,
) -> Path:
    """Query | neighbour 1 ... neighbour n, one row per query."""
    n_cols = 1 + max((len(r.neighbours) for r in rows), default=0)
    fig = Figure(figsize=(cell_inches * n_cols, cell_inches * max(1, len(rows)) + 0.4))
    axes = fig.subplots(max(1, len(rows)), n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for r, row in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(_thumb(row.query))
        ax.set_title(_short(f"query: {row.label}"), fontsize=7, color="tab:blue")
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("tab:blue")
            spine.set_linewidth(2)
        for c, (p, sim) in enumerate(row.neighbours, start=1):
            below = min_similarity is not None and sim < min_similarity
            axes[r, c].imshow(_thumb(p), alpha=0.35 if below else 1.0)
            axes[r, c].set_title(f"{sim:.3f}", fontsize=7, color="gray" if below else "black")
    fig.suptitle("query images and their nearest pool images (cosine)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_similarity_histogram(
    nn_sim: np.ndarray,
    threshold: float,
    path: str | Path,
    *,
    ref_sims: Mapping[str, np.ndarray] | None = None,
    ref_threshold: float | None = None,
    dpi: int = 100,
) -> Path:
    """Histogram of nearest-neighbour cosines, thresholds as vertical lines (log counts)."""
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.subplots()
    series = {"pool -> nearest other pool image": nn_sim}
    for name, sims in (ref_sims or {}).items():
        series[f"pool -> nearest {name} image"] = sims
    finite = [v[np.isfinite(v)] for v in series.values()]
    lo = min([float(v.min()) for v in finite if len(v)] + [threshold, ref_threshold or 1.0])
    bins = np.linspace(max(-1.0, lo - 0.02), 1.0, 61)
    for (label, _), v in zip(series.items(), finite, strict=True):
        ax.hist(v, bins=bins, histtype="step", linewidth=1.4, label=f"{label} ({len(v)})")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"dedup threshold {threshold:g}")
    if ref_sims and ref_threshold is not None and ref_threshold != threshold:
        ax.axvline(
            ref_threshold, color="tab:purple", linestyle=":", label=f"query/eval {ref_threshold:g}"
        )
    ax.set_yscale("log")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pool images")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("nearest-neighbour similarity", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)
