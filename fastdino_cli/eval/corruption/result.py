"""What a corrupt-eval run measured: the result object, its terminal table and its files.

``CorruptEvalResult`` is what :func:`fastdino_cli.eval.corruption.run.run_corrupt_eval` returns;
:func:`write_results` stores it as ``cells.csv``, ``summary.csv`` and ``results.json`` (the
numbers: the plots are drawn from them by ``draw_corrupt_eval`` of the drawing package), and
:func:`format_table` is what ``fastdino corrupt-eval`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fastdino_cli.eval.corruption.registry import ALL
from fastdino_cli.fileio import atomic_write, write_text

RELEASED = "released ImageNet-C files"
"""The ``benchmark`` column of a run on the released files: its mCE is the published one."""

RESULT_FILES = {"cells": "cells.csv", "summary": "summary.csv", "json": "results.json"}
"""Kind -> file name of what :func:`write_results` stores in the output folder."""


@dataclass
class CorruptEvalResult:
    """Everything one run measured, as tables a notebook can use directly.

    ``cells``: one row per (model, corruption, severity) with top1, top5 (fractions) and n;
    ``summary``: one row per model with clean accuracy, the means over the 15 benchmark, the 4
    extra and all 19 corruptions (over the selected ones), mCE and relative mCE (NaN when not
    defined; ``notes`` says why) and ``benchmark``: :data:`RELEASED`, or a description of the
    on-the-fly corruptions, whose mCE is not the published benchmark's. ``files``: what was
    written (kind -> path), empty when the run had no output folder.
    """

    cells: pd.DataFrame
    summary: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def per_corruption(self, metric: str = "top1") -> pd.DataFrame:
        """Mean over the selected severities: rows corruptions (in benchmark order), cols models."""
        table = self.cells.pivot_table(
            index="corruption", columns="model", values=metric, aggfunc="mean", sort=False
        )
        order = [c for c in ALL if c in table.index]
        return table.loc[order, list(dict.fromkeys(self.cells["model"]))]


def format_table(result: CorruptEvalResult) -> str:
    """Terminal table: top-1 (%) per corruption (per severity for one model), then the summary."""
    models = list(result.summary["model"])
    if len(models) == 1:
        grid = result.cells.pivot_table(
            index="corruption", columns="severity", values="top1", sort=False
        )
        grid.columns = [f"s{c}" for c in grid.columns]
        grid["mean"] = grid.mean(axis=1)
        grid = grid.loc[[c for c in ALL if c in grid.index]]
    else:
        grid = result.per_corruption("top1")
    lines = [(grid * 100).round(1).to_string()]
    summ = result.summary.set_index("model")
    pct = ["clean_top1", "clean_top5", "mean_benchmark", "mean_extra", "mean_all"]
    shown = summ[pct] * 100
    shown[["mCE", "relative_mCE"]] = summ[["mCE", "relative_mCE"]]
    on_the_fly = [b for b in summ.get("benchmark", pd.Series(dtype=str)) if b != RELEASED]
    if on_the_fly:  # the star says: not the published benchmark's mCE
        shown = shown.rename(columns={"mCE": "mCE*", "relative_mCE": "relative_mCE*"})
    lines += ["", shown.round(1).to_string(na_rep="-")]
    if on_the_fly:
        lines.append(f"* {on_the_fly[0]}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def write_results(result: CorruptEvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``cells.csv``, ``summary.csv`` and ``results.json`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in RESULT_FILES.items()}
    atomic_write(paths["cells"], lambda f: result.cells.to_csv(f, index=False), text=True)
    atomic_write(paths["summary"], lambda f: result.summary.to_csv(f, index=False), text=True)
    payload = {
        "meta": result.meta,
        "notes": result.notes,
        "summary": json.loads(result.summary.to_json(orient="records")),
        "cells": json.loads(result.cells.to_json(orient="records")),
    }
    write_text(paths["json"], json.dumps(payload, indent=2))
    return paths
