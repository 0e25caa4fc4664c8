"""The report's comparison figures, drawn from the files the evaluations left in each run dir.

Each evaluation runs once per run directory, so its own figure shows one model. The report puts
the runs side by side with the evaluations' own drawing functions, fed from the stored arrays:
corruption bars (``figures.corruption``), Fourier heatmaps on ONE colour scale
(``eval.fourier_figures``), the Grad-CAM grid with one column per run (``eval.gradcam_figures``)
and each run's training curves (``train.figures``). Nothing here runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fastdino_cli.fileio import write_text
from fastdino_cli.report.tables import RunData, corruption_cells


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
    from fastdino_cli.eval.corruption.run import CorruptEvalResult
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


def _fourier_result(meta: dict):
    from fastdino_cli.eval.fourier.basis import FourierResult

    error = np.load(Path(meta["folder"]) / "error.npy")
    return FourierResult(
        error=error,
        clean_error=float(meta["clean_error"]),
        per_frequency=np.empty(0),
        freqs=np.empty((0, 2), dtype=np.int64),
        axis=np.asarray(meta["axis"]),
        eps=float(meta["eps"]),
        size=int(meta["size"]),
        window=meta.get("window"),
        seed=int(meta.get("seed", 0)),
        n_images=int(meta.get("n_images", 0)),
    )


def fourier_side_by_side(runs: list[RunData], path: Path) -> tuple[Path | None, list[str]]:
    """Heatmaps of every run on one colour scale; runs whose grid differs are left out (named)."""
    with_maps = [r for r in runs if r.fourier is not None]
    if not with_maps:
        return None, []
    from fastdino_cli.figures.fourier import plot_side_by_side

    ref = with_maps[0].fourier
    key = (ref["size"], ref.get("window"), round(float(ref["eps"]), 9))
    same = [
        r
        for r in with_maps
        if (r.fourier["size"], r.fourier.get("window"), round(float(r.fourier["eps"]), 9)) == key
    ]
    left_out = [r.label for r in with_maps if r not in same]
    results = [_fourier_result(r.fourier) for r in same]
    return plot_side_by_side(results, [r.label for r in same], path), left_out


def gradcam_grid(runs: list[RunData], path: Path) -> tuple[Path | None, list[str]]:
    """One grid: the images, then one column per run, from each run's stored maps.

    Only runs that explained the same images at the same size join the grid (the others are
    named in the second return value and keep their own ``gradcam.png``).
    """
    with_maps = [r for r in runs if r.gradcam is not None]
    if not with_maps:
        return None, []
    from fastdino_cli.eval.gradcam.inputs import Sample, load_pixels, sized_transform
    from fastdino_cli.eval.gradcam.run import CheckpointMaps, GradCamResult
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
    samples = [Sample(Path(p), c) for p, c in zip(ref["images"], ref["true_class"], strict=True)]
    if not all(s.path.is_file() for s in samples):
        return None, [r.label for r in with_maps]
    pixels = load_pixels(samples, sized_transform(int(ref["image_size"][0])))
    columns = []
    for run in same:
        col = run.gradcam["columns"][0]
        folder = Path(run.gradcam["folder"])
        maps = np.stack([np.load(folder / m) for m in col["maps"]])
        columns.append(
            CheckpointMaps(
                run.label,
                col.get("checkpoint"),
                maps,
                col["predicted"],
                col["confidence"],
                col["explained"],
                col["score"],
            )
        )
    result = GradCamResult(
        samples=samples,
        pixels=pixels.permute(0, 2, 3, 1).numpy().astype(np.float32),
        columns=columns,
        method=ref["method"],
        target=ref["target"],
        target_layer=ref["target_layer"],
    )
    return plot_gradcam_grid(result, path), left_out


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


def dump_json(obj, path: Path) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
