"""Figures of recipes over seeds, with their 95% bootstrap intervals as error bars.

* :func:`plot_recipe_intervals`: one panel per metric, a bar per recipe at the mean over its
  seeds, the interval as an error bar and every seed's value as a dot;
* :func:`plot_differences`: each recipe minus the baseline, per metric, in % of the baseline's
  mean (one axis for metrics of different units), with the interval; the zero line is "no
  difference";
* :func:`plot_corruption_intervals`: top-1 per corruption, a bar per recipe with its interval.

Drawing only: the tables come from ``fastdino_cli.report.recipe_tables``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from fastdino_cli.fileio import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
    _plt().close(fig)
    return path


def _errors(means, lows, highs) -> np.ndarray:
    """Asymmetric error-bar lengths; 0 where there is no interval (one seed)."""
    m, lo, hi = (np.asarray(a, dtype=float) for a in (means, lows, highs))
    below = np.where(np.isfinite(lo), m - lo, 0.0)
    above = np.where(np.isfinite(hi), hi - m, 0.0)
    return np.vstack([below, above])


def plot_recipe_intervals(
    table: pd.DataFrame, runs: pd.DataFrame, path: str | Path, columns: int = 4
) -> Path:
    """Panels of metric means per recipe with interval error bars and the seeds as dots.

    ``table``: ``recipe_table`` rows (recipe, metric, label, n, mean, ci_low, ci_high);
    ``runs``: ``per_run_metrics`` (one row per run: recipe and every metric).
    """
    plt = _plt()
    metrics = list(dict.fromkeys(table["metric"]))
    recipes = list(dict.fromkeys(table["recipe"]))
    cols = min(columns, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows), squeeze=False)
    colors = plt.cm.tab10.colors
    x = np.arange(len(recipes))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        part = table[table["metric"] == metric].set_index("recipe").reindex(recipes)
        ax.bar(x, part["mean"], color=[colors[i % 10] for i in x], alpha=0.55, width=0.6)
        ax.errorbar(x, part["mean"], yerr=_errors(part["mean"], part["ci_low"], part["ci_high"]),
                    fmt="none", ecolor="black", capsize=5, lw=1.2)  # fmt: skip
        for i, recipe in enumerate(recipes):
            values = pd.to_numeric(runs.loc[runs["recipe"] == recipe, metric], errors="coerce")
            values = values[np.isfinite(values)]
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(i + np.asarray(jitter), values, s=14, color="black", zorder=3)
        finite = part[["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        if len(finite):  # zoom on the values: bars from zero would hide the spread
            lo, hi = float(finite.min()), float(finite.max())
            pad = 0.25 * (hi - lo) or 0.05 * abs(hi) or 1.0
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(x, [f"{r}\n(n={int(n)})" for r, n in zip(recipes, part["n"], strict=True)],
                      fontsize=8)  # fmt: skip
        ax.set_title(part["label"].dropna().iloc[0] if part["label"].notna().any() else metric,
                     fontsize=9)  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle("Mean over seeds (bars), 95% bootstrap interval (error bars), seeds (dots)",
                 fontsize=10)  # fmt: skip
    return _save(fig, path)


def plot_differences(table: pd.DataFrame, path: str | Path) -> Path:
    """Each recipe minus the baseline per metric, in % of the baseline mean, with intervals.

    ``table``: ``difference_table`` rows (recipe, baseline, metric, label, rel_diff,
    rel_ci_low, rel_ci_high, paired, n).
    """
    plt = _plt()
    table = table[np.isfinite(table["rel_diff"].astype(float))]
    metrics = list(dict.fromkeys(table["metric"]))
    recipes = list(dict.fromkeys(table["recipe"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(metrics) * max(1, len(recipes) / 2) + 1.4))
    colors = plt.cm.tab10.colors
    step = 0.7 / max(1, len(recipes))
    y = np.arange(len(metrics))[::-1].astype(float)
    for i, recipe in enumerate(recipes):
        part = table[table["recipe"] == recipe].set_index("metric").reindex(metrics)
        yy = y + 0.35 - step * (i + 0.5)
        mean = 100 * part["rel_diff"].astype(float)
        err = _errors(mean, 100 * part["rel_ci_low"].astype(float),
                      100 * part["rel_ci_high"].astype(float))  # fmt: skip
        paired = part["paired"].dropna()
        how = "paired" if len(paired) and bool(paired.iloc[0]) else "unpaired"
        ax.errorbar(mean, yy, xerr=err, fmt="o", color=colors[(i + 1) % 10], capsize=4,
                    label=f"{recipe} ({how}, n={int(part['n'].max())})")  # fmt: skip
    ax.axvline(0, color="black", lw=1)
    labels = table.drop_duplicates("metric").set_index("metric").loc[metrics, "label"]
    ax.set_yticks(y, list(labels), fontsize=8)
    base = table["baseline"].iloc[0] if len(table) else "baseline"
    ax.set_xlabel(f"difference to {base}, % of {base}'s mean (95% bootstrap interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_corruption_intervals(
    table: pd.DataFrame, clean: dict[str, float], path: str | Path
) -> Path:
    """Top-1 per corruption (mean over seeds), a bar per recipe with its interval; clean
    accuracy of each recipe (mean over seeds) dashed."""
    plt = _plt()
    corruptions = list(dict.fromkeys(table["corruption"]))
    recipes = list(dict.fromkeys(table["recipe"]))
    x = np.arange(len(corruptions))
    width = 0.8 / len(recipes)
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(x) * max(1, len(recipes) / 2)), 4.2))
    colors = plt.cm.tab10.colors
    for i, recipe in enumerate(recipes):
        part = table[table["recipe"] == recipe].set_index("corruption").reindex(corruptions)
        n = int(part["n"].max())
        ax.bar(x - 0.4 + width * (i + 0.5), part["mean"], width, color=colors[i % 10],
               yerr=_errors(part["mean"], part["ci_low"], part["ci_high"]), capsize=2,
               error_kw={"lw": 0.8}, label=f"{recipe} (n={n})")  # fmt: skip
        if math.isfinite(clean.get(recipe, math.nan)):
            ax.axhline(clean[recipe], color=colors[i % 10], ls="--", lw=1)
    ax.set_xticks(x, [c.replace("_", " ") for c in corruptions], rotation=45, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per corruption: mean over seeds, 95% bootstrap interval; dashed: clean")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
