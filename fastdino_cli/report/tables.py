"""The report's numbers: per run (training, FLOPs, probes, corruptions) and tables across runs.

Everything here is computed from what ``report.read`` found in the run directories; relative
changes are against the first run (the reference of the report).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from fastdino_cli.report.read import RunData, guard
from fastdino_cli.rundir import CONFIG

GROUP_NAMES = ("noise", "blur", "weather", "digital", "extra")
KNN_K = 20
"""The kNN column of the summary (DINOv2's headline k); every k measured is in probe.csv."""


# --------------------------------------------------------------------------------------------
# Numbers per run
# --------------------------------------------------------------------------------------------


def world_size(metrics: pd.DataFrame, batch_per_gpu: int) -> int:
    """Processes that trained, from consecutive log records: ips x seconds / (steps x batch)."""
    need = {"step", "images_per_s", "time"}
    if not need <= set(metrics.columns) or len(metrics) < 2:
        return 1
    m = metrics.sort_values("step")
    steps, secs = m["step"].diff().to_numpy()[1:], m["time"].diff().to_numpy()[1:]
    ips = m["images_per_s"].to_numpy()[1:]
    ok = (steps > 0) & (secs > 0) & np.isfinite(ips)
    if not ok.any():
        return 1
    est = np.median(ips[ok] * secs[ok] / (steps[ok] * batch_per_gpu))
    return max(1, int(round(est)))


def training_numbers(run: RunData) -> dict[str, Any] | None:
    """Steps done, training wall-clock (sum of the logged windows) and overall images/s.

    Each metrics record covers the steps since the previous record at ``images_per_s``, so the
    window lasted ``steps x global_batch / images_per_s`` seconds; time between a stop and a
    resume is not counted. Overall images/s is the steps-weighted harmonic mean of the windows.
    """
    if run.metrics is None or run.config is None or "images_per_s" not in run.metrics:
        return None
    m = run.metrics.sort_values("step").drop_duplicates("step", keep="last")
    steps = m["step"].to_numpy()
    window = np.diff(np.concatenate([[-1], steps]))
    ips = m["images_per_s"].to_numpy(dtype=float)
    ok = (window > 0) & (ips > 0)
    per_gpu = run.config.train.batch_size_per_gpu  # runs stored with a per-GPU batch
    batch = run.config.batch(world_size(m, per_gpu) if per_gpu else 1).global_batch
    seconds = float(np.sum(window[ok] * batch / ips[ok]))
    done = int(steps[-1]) + 1
    return {
        "steps": done,
        "total_steps": run.config.total_iterations,
        "global_batch": batch,
        "wall_clock_s": seconds,
        "images_per_s": done * batch / seconds if seconds > 0 else math.nan,
        "final_loss": float(m["loss"].iloc[-1]) if "loss" in m else math.nan,
    }


def flops_numbers(run: RunData, steps_done: int | None) -> dict[str, Any] | None:
    """GFLOPs per training image and PFLOPs of the steps done, from ``train.plan``' plan."""
    if run.config is None:
        return None
    from fastdino_cli.train.plan import plan_config

    plan = plan_config(run.config)
    done = plan.total_steps if steps_done is None else min(steps_done, plan.total_steps)
    left, pflops, images = done, 0.0, 0
    per_step = plan.global_batch
    for stage in plan.stages:
        n = min(left, stage.steps)
        pflops += n * per_step * stage.gflops_per_image / 1e6
        images += n * per_step
        left -= n
    return {
        "gflops_per_image": pflops * 1e6 / images if images else plan.gflops_per_image,
        "pflops": pflops,
        "pflops_planned": plan.pflops,
    }


def probe_numbers(run: RunData) -> dict[str, Any] | None:
    """kNN top-1 per k and linear top-1 (in %) of the trained model and of its random init."""
    if not run.probe:
        return None
    out: dict[str, Any] = {}
    for row in run.probe:
        prefix = "random_" if row.get("random_init") else ""
        for k, v in (row.get("knn") or {}).items():
            out[f"{prefix}knn{k}"] = _float(v.get("top1"))
        out[f"{prefix}linear"] = _float((row.get("linear") or {}).get("top1"))
    return out


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


def corruption_numbers(run: RunData) -> dict[str, Any] | None:
    """Clean top-1, mean top-1 per corruption group and over 15 / 19 corruptions (in %), and
    mCE / relative mCE (in %, as corrupt-eval stored them: NaN where they are not defined)."""
    if run.corrupt_summary is None:
        return None
    s = run.corrupt_summary
    out = {"clean": 100 * _float(s.get("clean_top1"))}
    cells = run.corrupt_cells
    if cells is not None and len(cells):
        per_c = cells.groupby(["group", "corruption"])["top1"].mean()
        for group in GROUP_NAMES:
            out[group] = 100 * float(per_c[group].mean()) if group in per_c.index else math.nan
    out["mean_15"] = 100 * _float(s.get("mean_benchmark"))
    out["mean_19"] = 100 * _float(s.get("mean_all"))
    out["mCE"] = _float(s.get("mCE"))
    out["relative_mCE"] = _float(s.get("relative_mCE"))
    return out


# --------------------------------------------------------------------------------------------
# Tables across runs
# --------------------------------------------------------------------------------------------


def relative_change(values: pd.Series) -> pd.Series:
    """``(x - first) / first`` for every row (NaN where the first value is missing or zero)."""
    first = values.iloc[0] if len(values) else math.nan
    if first is None or not np.isfinite(first) or first == 0:
        return pd.Series(math.nan, index=values.index)
    return (values.astype(float) - first) / first


def with_relative(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Add ``<col>_rel`` (relative change against the first row) after each numeric column."""
    out = frame.copy()
    for col in columns:
        if col in out:
            out.insert(out.columns.get_loc(col) + 1, f"{col}_rel", relative_change(out[col]))
    return out


def runs_table(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: preset, steps, wall-clock, images/s, FLOPs (and relative changes)."""
    rows = []
    for run in runs:
        t = training_numbers(run) or {}
        f = guard(run, run.run_dir / CONFIG, lambda r=run, t=t: flops_numbers(r, t.get("steps")))
        rows.append(
            {
                "run": run.label,
                "preset": run.preset,
                "steps": t.get("steps"),
                "total_steps": t.get("total_steps"),
                "wall_clock_s": t.get("wall_clock_s", math.nan),
                "images_per_s": t.get("images_per_s", math.nan),
                "gflops_per_image": (f or {}).get("gflops_per_image", math.nan),
                "pflops": (f or {}).get("pflops", math.nan),
                "final_loss": t.get("final_loss", math.nan),
            }
        )
    frame = pd.DataFrame(rows)
    return with_relative(frame, ["wall_clock_s", "images_per_s", "gflops_per_image", "pflops"])


def probe_table(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: kNN top-1 for every k, linear top-1, and the random-init baseline."""
    rows = [{"run": r.label, **(probe_numbers(r) or {})} for r in runs]
    frame = pd.DataFrame(rows)
    trained = [c for c in frame.columns if c.startswith("knn") or c == "linear"]
    return with_relative(frame, trained)


def robustness_table(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: clean, per-group and mean corrupted top-1 (%), mCE, relative mCE."""
    cols = ["clean", *GROUP_NAMES, "mean_15", "mean_19", "mCE", "relative_mCE"]
    rows = [{"run": r.label, **{c: math.nan for c in cols}} for r in runs]
    for row, run in zip(rows, runs, strict=True):
        row.update(corruption_numbers(run) or {})
    return with_relative(pd.DataFrame(rows), cols)


def corruption_cells(runs: list[RunData]) -> pd.DataFrame:
    """Every run's corruption cells in one long table, ``model`` renamed to the run label."""
    frames = []
    for run in runs:
        if run.corrupt_cells is not None and len(run.corrupt_cells):
            cells = run.corrupt_cells.copy()
            first_model = cells["model"].iloc[0]
            cells = cells[cells["model"] == first_model].assign(model=run.label)
            frames.append(cells)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def corruption_wide(runs: list[RunData]) -> pd.DataFrame:
    """Top-1 (%) per corruption (rows, with its group) and run (columns)."""
    cells = corruption_cells(runs)
    if cells.empty:
        return pd.DataFrame(columns=["corruption", "group"])
    wide = cells.pivot_table(
        index=["corruption", "group"], columns="model", values="top1", aggfunc="mean", sort=False
    )
    wide = (wide * 100).reset_index()
    wide.columns.name = None
    return wide


def gradcam_agreement(runs: list[RunData]) -> dict[str, float]:
    """Share of the Grad-CAM images each run classified correctly (from gradcam.json)."""
    out: dict[str, float] = {}
    for run in runs:
        if run.gradcam is None:
            continue
        col = run.gradcam["columns"][0]
        truth = run.gradcam.get("true_class") or []
        pairs = [(p, t) for p, t in zip(col["predicted"], truth, strict=False) if t is not None]
        if pairs and all(p is not None for p, _ in pairs):
            out[run.label] = 100.0 * sum(p == t for p, t in pairs) / len(pairs)
    return out
