"""Figures of ``fastdino probe``: per-class accuracy as sorted bars.

:func:`plot_per_class` draws one model's val top-1 per class (the linear head), sorted from the
worst class to the best, with the overall top-1 as a dashed line: where a model fails is
visible at a glance, and the worst classes are named. :func:`draw_probe` draws it for every
checkpoint ``fastdino probe`` stored a head in, beside its per-class CSV. Drawing only: the
numbers come from ``fastdino_cli.eval.probe`` (a ``ProbeRow``, or ``probe.json``'s rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastdino_cli.fileio import save_figure

NAMED_WHEN_AT_MOST = 60
"""Every class is named on the x axis up to this many classes; above, only the worst ones."""
WORST_NAMED = 5


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sorted_per_class(
    records: Sequence[Mapping[str, Any]], column: str = "linear"
) -> tuple[list[str], np.ndarray]:
    """(class names, top-1 %) sorted ascending; classes without val images left out."""
    kept = [(str(r["class"]), float(r[column])) for r in records if r.get(column) is not None]
    kept.sort(key=lambda item: (item[1], item[0]))
    return [n for n, _ in kept], np.array([v for _, v in kept], dtype=float)


def plot_per_class(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str,
    overall: float | None = None,
    column: str = "linear",
) -> Path:
    """Sorted bars of per-class top-1 (%) from ``per_class`` records (see ``ProbeRow``)."""
    plt = _plt()
    names, values = sorted_per_class(records, column)
    n = len(values)
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.22 * n + 2)), 4.2))
    x = np.arange(n)
    colors = plt.cm.RdYlGn(values / 100.0)
    ax.bar(x, values, width=0.9 if n <= NAMED_WHEN_AT_MOST else 1.0, color=colors, linewidth=0)
    if overall is not None:
        ax.axhline(overall, color="black", ls="--", lw=1, label=f"overall top-1 {overall:.1f}%")
        ax.legend(fontsize=8, loc="upper left")
    if n <= NAMED_WHEN_AT_MOST:
        ax.set_xticks(x, names, rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes, worst to best")
        for i in range(min(WORST_NAMED, n)):
            ax.annotate(names[i], (x[i], values[i]), xytext=(4, 12 + 10 * i),
                        textcoords="offset points", fontsize=7, rotation=0,
                        arrowprops={"arrowstyle": "-", "lw": 0.5})  # fmt: skip
    ax.set_ylabel(f"{column} top-1 on val (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def draw_probe(report: Any) -> list[Path]:
    """The per-class figure of every stored head in a ``ProbeReport``, beside its CSV
    (``probe/<checkpoint stem>_per_class.png``); nothing for ``--no-write`` runs."""
    from fastdino_cli.eval.probe.result import details_path

    drawn = []
    for row in report.rows:
        if not row.stored_in or not row.per_class:
            continue
        title = f"{Path(row.checkpoint).name}: per-class linear top-1 ({row.linear.spec.label()})"
        drawn.append(
            plot_per_class(
                row.per_class,
                details_path(row.stored_in, "per_class.png"),
                title=title,
                overall=row.linear.val_top1,
            )
        )
    return drawn
