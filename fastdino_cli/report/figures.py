"""The report's comparison figures, drawn from the files the evaluations left in each run dir.

Each evaluation runs once per run directory, so its own figure shows one model. The report puts
the runs side by side with the evaluations' own drawing functions (``fastdino_cli.figures``),
fed from the stored results read back by ``eval.*.result``: corruption bars, Fourier heatmaps on
ONE colour scale, the Grad-CAM grid with one column per run, and each run's training curves.
Nothing here runs a model; a figure whose inputs are missing is left out (the section says so).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from fastdino_cli.report.read import RunData
from fastdino_cli.report.tables import corruption_cells


def training_curves(run: RunData, path: Path) -> Path | None:
    """The run's losses / lr / crop-size panels (``fastdino plot-metrics``), saved to ``path``."""
    if run.metrics is None:
        return None
    from fastdino_cli.figures.training import plot_metrics

    return Path(plot_metrics(run.run_dir, path))


def corruption_bars(runs: list[RunData], path: Path) -> Path | None:
    """Top-1 per corruption, one bar per run, clean accuracy dashed."""
    cells = corruption_cells(runs)
    if cells.empty:
        return None
    from fastdino_cli.eval.corruption.result import CorruptEvalResult
    from fastdino_cli.figures.corruption import plot_accuracy_bars

    summary = []
    severities: set[int] = set()
    for run in runs:
        if run.corrupt_summary is None or run.label not in set(cells["model"]):
            continue
        summary.append({**run.corrupt_summary, "model": run.label})
        severities |= set((run.corrupt_meta or {}).get("severities") or [])
    if not severities:
        severities = set(int(s) for s in cells["severity"].unique())
    result = CorruptEvalResult(cells, pd.DataFrame(summary), [], {"severities": sorted(severities)})
    return plot_accuracy_bars(result, path)


def fourier_side_by_side(runs: list[RunData], path: Path) -> tuple[Path | None, list[str]]:
    """Heatmaps of every run on one colour scale; runs whose grid differs are left out (named)."""
    with_maps = [r for r in runs if r.fourier is not None]
    if not with_maps:
        return None, []
    from fastdino_cli.eval.fourier.result import load_heatmap
    from fastdino_cli.figures.fourier import plot_side_by_side

    ref = with_maps[0].fourier
    key = (ref["size"], ref.get("window"), round(float(ref["eps"]), 9))
    same = [
        r
        for r in with_maps
        if (r.fourier["size"], r.fourier.get("window"), round(float(r.fourier["eps"]), 9)) == key
    ]
    left_out = [r.label for r in with_maps if r not in same]
    results = [load_heatmap(r.fourier["folder"]) for r in same]
    return plot_side_by_side(results, [r.label for r in same], path), left_out


def gradcam_grid(runs: list[RunData], path: Path) -> tuple[Path | None, list[str]]:
    """One grid: the images, then one column per run, from each run's stored maps.

    Only runs that explained the same images at the same size join the grid (the others are
    named in the second return value and keep their own ``gradcam.png``).
    """
    with_maps = [r for r in runs if r.gradcam is not None]
    if not with_maps:
        return None, []
    from fastdino_cli.eval.gradcam.result import load_columns, load_gradcam
    from fastdino_cli.figures.gradcam import plot_gradcam_grid

    ref = with_maps[0].gradcam
    key = (ref["images"], ref["image_size"], ref["method"], ref["target"])
    same = [
        r
        for r in with_maps
        if (r.gradcam["images"], r.gradcam["image_size"], r.gradcam["method"], r.gradcam["target"])
        == key
    ]
    left_out = [r.label for r in with_maps if r not in same]
    if not all(Path(p).is_file() for p in ref["images"]):
        return None, [r.label for r in with_maps]
    first = load_gradcam({**ref, "columns": []}, ref["folder"])
    columns = [  # each run's first column (its own checkpoint), titled with the run's label
        load_columns({"columns": r.gradcam["columns"][:1]}, r.gradcam["folder"])[0] for r in same
    ]
    columns = [dataclasses.replace(c, name=r.label) for c, r in zip(columns, same, strict=True)]
    return plot_gradcam_grid(dataclasses.replace(first, columns=columns), path), left_out


def draw_report_figures(
    runs: list[RunData], out: Path, per_run_bars: bool = True
) -> dict[str, Path]:
    """Every per-run figure the report shows, under ``out/figures``; key -> path relative to
    ``out``.

    Keys: ``training:<label>`` per run with metrics, ``corruption_bars`` (unless
    ``per_run_bars`` is False: with seeds the report draws one bar per recipe instead),
    ``fourier``, ``gradcam`` (each only when some run has its data).
    """
    figs = out / "figures"
    found: dict[str, Path] = {}
    for run in runs:
        safe = run.label.replace("/", "_")
        path = training_curves(run, figs / f"training_{safe}.png")
        if path:
            found[f"training:{run.label}"] = path
    if per_run_bars and (bars := corruption_bars(runs, figs / "corruption_bars.png")):
        found["corruption_bars"] = bars
    heat, _ = fourier_side_by_side(runs, figs / "fourier_side_by_side.png")
    if heat:
        found["fourier"] = heat
    cam, _ = gradcam_grid(runs, figs / "gradcam_grid.png")
    if cam:
        found["gradcam"] = cam
    return {k: v.relative_to(out) for k, v in found.items()}


def draw_recipe_figures(
    frame: pd.DataFrame,
    recipe_t: pd.DataFrame,
    diff_t: pd.DataFrame,
    corr_t: pd.DataFrame,
    out: Path,
) -> dict[str, Path]:
    """The figures of recipes over seeds (error bars: 95% bootstrap intervals), under
    ``out/figures``; key -> path relative to ``out``.

    Keys: ``recipes`` (every metric per recipe), ``differences`` (each recipe minus the
    baseline), ``corruption_intervals`` (top-1 per corruption), each when it has data.
    """
    from fastdino_cli.figures.recipes import (
        plot_corruption_intervals,
        plot_differences,
        plot_recipe_intervals,
    )

    figs = out / "figures"
    found: dict[str, Path] = {}
    if not recipe_t.empty:
        found["recipes"] = plot_recipe_intervals(recipe_t, frame, figs / "recipes.png")
    if not diff_t.empty and diff_t["rel_diff"].astype(float).notna().any():
        found["differences"] = plot_differences(diff_t, figs / "differences.png")
    if not corr_t.empty:
        clean = {}
        if "clean" in set(recipe_t.get("metric", [])):
            rows = recipe_t[recipe_t["metric"] == "clean"]
            clean = dict(zip(rows["recipe"], rows["mean"].astype(float), strict=True))
        found["corruption_intervals"] = plot_corruption_intervals(
            corr_t, clean, figs / "corruption_intervals.png"
        )
    return {k: v.relative_to(out) for k, v in found.items()}
