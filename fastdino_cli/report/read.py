"""What the subcommands left in a run directory, read back as plain data (never recomputed).

``fastdino report`` never reruns an evaluation: it reads the files each subcommand wrote into
the run directory (names from ``fastdino_cli.rundir``), so a report is cheap to rebuild and
always shows the numbers that were measured. An absent file is a *missing section*; a file that
exists but cannot be read is listed in ``RunData.problems``, never fatal.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from fastdino_cli.config import Config, load_config_yaml
from fastdino_cli.errors import DataError, FastdinoError
from fastdino_cli.eval.corruption.result import RESULT_FILES
from fastdino_cli.eval.fourier.result import ERROR as FOURIER_ERROR
from fastdino_cli.eval.fourier.result import META as FOURIER_META
from fastdino_cli.eval.gradcam.result import META as GRADCAM_META
from fastdino_cli.rundir import (
    CONFIG,
    CORRUPT_DIR,
    FINAL,
    FOURIER_DIR,
    GRADCAM_DIR,
    METRICS,
    PROBE_JSON,
)

T = TypeVar("T")


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
    cfg_path = root / CONFIG
    if cfg_path.is_file():
        run.config = guard(run, cfg_path, lambda: load_config_yaml(cfg_path.read_text()))
    if (root / METRICS).is_file():
        from fastdino_cli.figures.training import load_metrics

        run.metrics = guard(run, root / METRICS, lambda: load_metrics(root))
    run.probe = guard(run, root / PROBE_JSON, lambda: read_probe(root))
    summary_csv, cells_csv, results_json = (
        root / CORRUPT_DIR / RESULT_FILES[k] for k in ("summary", "cells", "json")
    )
    if summary_csv.is_file():
        summary = guard(run, summary_csv, lambda: pd.read_csv(summary_csv))
        if summary is not None and len(summary):
            run.corrupt_summary = summary.iloc[0].to_dict()
        if cells_csv.is_file():
            run.corrupt_cells = guard(run, cells_csv, lambda: pd.read_csv(cells_csv))
        if results_json.is_file():
            results = guard(run, results_json, lambda: _json(results_json))
            run.corrupt_meta = (results or {}).get("meta")
    run.fourier = guard(run, root / FOURIER_DIR, lambda: read_fourier(root / FOURIER_DIR))
    gc = root / GRADCAM_DIR / GRADCAM_META
    if gc.is_file():
        data = guard(run, gc, lambda: _json(gc))
        if data is not None:
            run.gradcam = {**data, "folder": str(gc.parent)}
    return run


def guard(run: RunData, path: Path, fn: Callable[[], T]) -> T | None:
    """``fn()``, or None with the problem recorded when the file cannot be read."""
    try:
        return fn()
    except (FastdinoError, OSError, ValueError, KeyError) as e:
        run.problems.append(f"{path}: {e}")
        return None


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_probe(run_dir: Path) -> list[dict[str, Any]] | None:
    """probe.json rows of ``final.pt``; else the accuracy stored in final.pt's ``probe`` entry."""
    path = run_dir / PROBE_JSON
    if path.is_file():
        data = _json(path)
        rows = data.get(FINAL) or next(iter(data.values()), None)
        if rows:
            return rows
    ckpt = run_dir / FINAL
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
    metas = sorted(folder.glob(f"*/{FOURIER_META}"))
    metas = [m for m in metas if (m.parent / FOURIER_ERROR).is_file()]
    if not metas:
        return None
    chosen = next((m for m in metas if m.parent.name == Path(FINAL).stem), metas[0])
    return {**_json(chosen), "folder": str(chosen.parent)}
