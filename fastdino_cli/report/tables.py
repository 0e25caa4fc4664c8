"""What the subcommands left in a run directory, read back as plain numbers and tables.

``fastdino report`` never recomputes an evaluation: it reads the files each subcommand wrote
into the run directory (layout below), so a report is cheap to rebuild and always shows the
numbers that were measured. A file that is absent is a *missing section*, and the report says
which command fills it.

    RUN_DIR/config.yaml             pretrain: the resolved config (preset, batch, steps)
    RUN_DIR/metrics.jsonl           pretrain: one record per logged window (images/s, time)
    RUN_DIR/final.pt                pretrain; `probe` adds its `probe` entry (head + accuracy)
    RUN_DIR/probe.json              probe: kNN / linear rows, keyed by checkpoint file name
    RUN_DIR/corrupt-eval/           corrupt-eval --out RUN_DIR/corrupt-eval: summary.csv, cells.csv
    RUN_DIR/fourier/<label>/        fourier-heatmap --out RUN_DIR/fourier: error.npy, meta.json
    RUN_DIR/gradcam/                gradcam --out RUN_DIR/gradcam: gradcam.json, maps/*.npy
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fastdino_cli.config import Config, load_config_yaml
from fastdino_cli.errors import DataError, FastdinoError

CORRUPT_DIR = "corrupt-eval"
FOURIER_DIR = "fourier"
GRADCAM_DIR = "gradcam"
CHECKPOINT = "final.pt"
GROUP_NAMES = ("noise", "blur", "weather", "digital", "extra")
KNN_K = 20
"""The kNN column of the summary (DINOv2's headline k); every k measured is in probe.csv."""


@dataclass
class RunData:
    """Everything found in one run directory; ``None`` where the producing step has not run."""

    run_dir: Path
    label: str
    config: Config | None = None
    metrics: pd.DataFrame | None = None
    probe: list[dict[str, Any]] | None = None
    """probe.json rows for final.pt: the trained model, then its random-init twin if probed."""
    corrupt_summary: dict[str, Any] | None = None
    corrupt_cells: pd.DataFrame | None = None
    corrupt_meta: dict[str, Any] | None = None
    fourier: dict[str, Any] | None = None
    """meta.json of the heatmap plus ``folder`` (where error.npy is)."""
    gradcam: dict[str, Any] | None = None
    """gradcam.json plus ``folder``."""
    problems: list[str] = field(default_factory=list)
    """Files that exist but could not be read (reported, never fatal)."""

    @property
    def preset(self) -> str:
        return (self.config.preset if self.config else None) or "-"


def read_run(run_dir: str | Path, label: str | None = None) -> RunData:
    """Read every known output of one run directory (a missing file leaves its field None)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass run directories written by pretrain")
    run = RunData(root, label or root.resolve().name)
    cfg_path = root / "config.yaml"
    if cfg_path.is_file():
        run.config = _guard(run, cfg_path, lambda: load_config_yaml(cfg_path.read_text()))
    if (root / "metrics.jsonl").is_file():
        from fastdino_cli.figures.training import load_metrics

        run.metrics = _guard(run, root / "metrics.jsonl", lambda: load_metrics(root))
    run.probe = _guard(run, root / "probe.json", lambda: read_probe(root))
    corrupt = root / CORRUPT_DIR
    if (corrupt / "summary.csv").is_file():
        summary = _guard(run, corrupt / "summary.csv", lambda: pd.read_csv(corrupt / "summary.csv"))
        if summary is not None and len(summary):
            run.corrupt_summary = summary.iloc[0].to_dict()
        if (corrupt / "cells.csv").is_file():
            run.corrupt_cells = _guard(
                run, corrupt / "cells.csv", lambda: pd.read_csv(corrupt / "cells.csv")
            )
        if (corrupt / "results.json").is_file():
            results = _guard(run, corrupt / "results.json", lambda: _json(corrupt / "results.json"))
            run.corrupt_meta = (results or {}).get("meta")
    run.fourier = _guard(run, root / FOURIER_DIR, lambda: read_fourier(root / FOURIER_DIR))
    gc = root / GRADCAM_DIR / "gradcam.json"
    if gc.is_file():
        data = _guard(run, gc, lambda: _json(gc))
        if data is not None:
            run.gradcam = {**data, "folder": str(gc.parent)}
    return run


def _guard(run: RunData, path: Path, fn):
    try:
        return fn()
    except (FastdinoError, OSError, ValueError, KeyError) as e:
        run.problems.append(f"{path}: {e}")
        return None


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_probe(run_dir: Path) -> list[dict[str, Any]] | None:
    """probe.json rows of ``final.pt``; else the accuracy stored in final.pt's ``probe`` entry."""
    path = run_dir / "probe.json"
    if path.is_file():
        data = _json(path)
        rows = data.get(CHECKPOINT) or next(iter(data.values()), None)
        if rows:
            return rows
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        return None
    from fastdino_cli import checkpoint as ckpt_io

    entry = ckpt_io.load(ckpt).get("probe")
    if not entry:
        return None
    acc = entry.get("accuracy") or {}
    return [
        {
            "name": str(ckpt),
            "random_init": False,
            "knn": acc.get("knn", {}),
            "linear": {"top1": acc.get("linear_top1"), "top5": acc.get("linear_top5")},
        }
    ]


def read_fourier(folder: Path) -> dict[str, Any] | None:
    """meta.json of the heatmap of ``final`` (or the only one) under ``RUN_DIR/fourier``."""
    if not folder.is_dir():
        return None
    metas = sorted(folder.glob("*/meta.json"))
    metas = [m for m in metas if (m.parent / "error.npy").is_file()]
    if not metas:
        return None
    chosen = next((m for m in metas if m.parent.name == Path(CHECKPOINT).stem), metas[0])
    return {**_json(chosen), "folder": str(chosen.parent)}


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
    batch = run.config.train.batch_size_per_gpu * world_size(m, run.config.train.batch_size_per_gpu)
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
    """Clean top-1, mean top-1 per corruption group and over 15 / 19 corruptions (in %)."""
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
        f = _guard(
            run, run.run_dir / "config.yaml", lambda r=run, t=t: flops_numbers(r, t.get("steps"))
        )
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
    """One row per run: clean, per-group and mean corrupted top-1 (%)."""
    cols = ["clean", *GROUP_NAMES, "mean_15", "mean_19"]
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
