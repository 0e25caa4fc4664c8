"""The report's numbers per recipe: every metric over the seeds, and each recipe minus the baseline.

Built on the per-run tables of ``report.tables`` (nothing is measured twice): one row per run
with every metric the report knows (``per_run_metrics``), then per recipe and metric the mean,
standard deviation and bootstrap interval (``recipe_table``), each recipe's difference to the
baseline recipe (the first run's; ``difference_table``), and the accuracy per corruption with
its interval (``corruption_intervals``, for the error bars of the corruption figure). The
statistics are ``report.intervals``'.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from fastdino_cli.report.intervals import difference, summarize
from fastdino_cli.report.recipes import Recipe, run_seed
from fastdino_cli.report.tables import corruption_cells

LABELS = {
    "linear": "linear top-1 %",
    "clean": "clean top-1 %",
    "mean_15": "mean corrupted top-1 % (15 benchmark)",
    "mean_19": "mean corrupted top-1 % (all 19)",
    "mCE": "mCE % (lower is better)",
    "relative_mCE": "relative mCE % (lower is better)",
    "fourier_clean_error": "Fourier clean error % (lower is better)",
    "fourier_mean_error": "Fourier mean error % (lower is better)",
    "wall_clock_min": "training wall-clock, min",
    "images_per_s": "training images/s",
    "pflops": "training PFLOPs",
}
"""Metric key -> what the tables and figures call it (kNN keys are ``knn<k>``)."""
ORDER = [
    "knn", "linear", "clean", "mean_15", "mean_19", "mCE", "relative_mCE",
    "fourier_clean_error", "fourier_mean_error", "wall_clock_min", "images_per_s", "pflops",
]  # fmt: skip


def metric_label(key: str) -> str:
    if key.startswith("knn") and key[3:].isdigit():
        return f"kNN k={key[3:]} top-1 %"
    return LABELS.get(key, key)


def _order(key: str) -> tuple[int, int]:
    if key.startswith("knn") and key[3:].isdigit():
        return 0, int(key[3:])
    return (ORDER.index(key), 0) if key in ORDER else (len(ORDER), 0)


def per_run_metrics(recipes: list[Recipe], tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per run: ``run``, ``recipe``, ``seed`` and every metric measured in some run.

    ``tables`` are the report's per-run tables (``runs``, ``probe``, ``robustness``), keyed by
    run label; Fourier errors come from each run's stored heatmap metadata (in %).
    """
    by_run: dict[str, dict[str, Any]] = {}
    for recipe in recipes:
        for run in recipe.runs:
            row: dict[str, Any] = {"run": run.label, "recipe": recipe.name, "seed": run_seed(run)}
            if run.fourier is not None:
                row["fourier_clean_error"] = 100 * float(run.fourier.get("clean_error", math.nan))
                row["fourier_mean_error"] = 100 * float(run.fourier.get("mean_error", math.nan))
            by_run[run.label] = row

    def take(name: str, columns) -> None:
        table = tables.get(name)
        if table is None or table.empty:
            return
        for record in table.to_dict("records"):
            row = by_run.get(record["run"])
            if row is None:
                continue
            for col in columns(table):
                row[col] = record.get(col)

    take("probe", lambda t: [c for c in t.columns if _is_probe_metric(c)])
    take("robustness", lambda t: [c for c in ("clean", "mean_15", "mean_19", "mCE",
                                              "relative_mCE") if c in t])  # fmt: skip
    take("runs", lambda t: [c for c in ("wall_clock_s", "images_per_s", "pflops") if c in t])
    frame = pd.DataFrame(list(by_run.values()))
    if "wall_clock_s" in frame:
        frame["wall_clock_min"] = frame.pop("wall_clock_s").astype(float) / 60
    metrics = [c for c in frame.columns if c not in ("run", "recipe", "seed")]
    metrics = [c for c in metrics if pd.to_numeric(frame[c], errors="coerce").notna().any()]
    return frame[["run", "recipe", "seed", *sorted(metrics, key=_order)]]


def _is_probe_metric(col: str) -> bool:
    return col == "linear" or (col.startswith("knn") and col[3:].isdigit())


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("run", "recipe", "seed")]


def _pairs(frame: pd.DataFrame, recipe: str, metric: str) -> list[tuple[int | None, float]]:
    rows = frame[frame["recipe"] == recipe]
    seeds = [None if pd.isna(s) else int(s) for s in rows["seed"]]
    values = pd.to_numeric(rows[metric], errors="coerce").astype(float).tolist()
    return list(zip(seeds, values, strict=True))


def recipe_table(recipes: list[Recipe], frame: pd.DataFrame) -> pd.DataFrame:
    """Per recipe and metric: n, mean, std, the 95% bootstrap interval, the seeds and values."""
    rows = []
    for recipe in recipes:
        for metric in metric_columns(frame):
            pairs = _pairs(frame, recipe.name, metric)
            iv = summarize([v for _, v in pairs])
            kept = [(s, v) for s, v in pairs if math.isfinite(v)]
            rows.append(
                {"recipe": recipe.name, "metric": metric, "label": metric_label(metric),
                 "n": iv.n, "mean": iv.mean, "std": iv.std, "ci_low": iv.low, "ci_high": iv.high,
                 "seeds": ",".join("-" if s is None else str(s) for s, _ in kept),
                 "values": ";".join(f"{v:.6g}" for _, v in kept)}
            )  # fmt: skip
    return pd.DataFrame(rows)


def difference_table(recipes: list[Recipe], frame: pd.DataFrame) -> pd.DataFrame:
    """Per recipe after the first and metric: ``recipe - baseline`` with its interval.

    ``rel_*`` divide by the baseline's mean (the relative change of the report's other tables).
    """
    if len(recipes) < 2:
        return pd.DataFrame()
    base = recipes[0]
    rows = []
    for recipe in recipes[1:]:
        for metric in metric_columns(frame):
            b = _pairs(frame, base.name, metric)
            d = difference(b, _pairs(frame, recipe.name, metric))
            b_mean = summarize([v for _, v in b]).mean
            scale = abs(b_mean) if math.isfinite(b_mean) and b_mean != 0 else math.nan
            rows.append(
                {"recipe": recipe.name, "baseline": base.name, "metric": metric,
                 "label": metric_label(metric), "diff": d.mean, "ci_low": d.low,
                 "ci_high": d.high, "paired": d.paired, "n": d.n, "n_baseline": d.n_baseline,
                 "excludes_zero": d.excludes_zero, "rel_diff": d.mean / scale,
                 "rel_ci_low": d.low / scale, "rel_ci_high": d.high / scale}
            )  # fmt: skip
    return pd.DataFrame(rows)


def corruption_intervals(recipes: list[Recipe]) -> pd.DataFrame:
    """Per recipe and corruption: top-1 % (mean over severities) over the seeds, with interval."""
    runs = [r for recipe in recipes for r in recipe.runs]
    cells = corruption_cells(runs)
    if cells.empty:
        return pd.DataFrame()
    per_run = cells.groupby(["model", "corruption", "group"], sort=False)["top1"].mean() * 100
    per_run = per_run.reset_index()
    rows = []
    for recipe in recipes:
        mine = per_run[per_run["model"].isin([r.label for r in recipe.runs])]
        for (corruption, group), part in mine.groupby(["corruption", "group"], sort=False):
            iv = summarize(part["top1"].tolist())
            rows.append(
                {"recipe": recipe.name, "corruption": corruption, "group": group, "n": iv.n,
                 "mean": iv.mean, "std": iv.std, "ci_low": iv.low, "ci_high": iv.high}
            )  # fmt: skip
    return pd.DataFrame(rows)
