"""What a fourier-heatmap run wrote, and how it is read back.

Layout under the run's ``out`` folder (numbers only; the plots are drawn from these by
``draw_fourier_run`` of the drawing package)::

    <out>/<label>/error.npy               top-1 error per frequency, DC at the centre
    <out>/<label>/error_minus_clean.npy   the same minus the clean error
    <out>/<label>/error_top5.npy          top-5 error per frequency (same layout)
    <out>/<label>/error_top5_minus_clean.npy  the same minus the clean top-5 error
    <out>/<label>/meta.json               eps, size, window, seed, images, checkpoint hash, probe
    <out>/radial.csv                      (radial=True) mean top-1 / top-5 error per radius
    <out>/summary.json                    the shared settings and each checkpoint's clean
                                          top-1 / top-5 error and mean errors over the map

:func:`load_heatmap` rebuilds a :class:`FourierResult` from ``error.npy`` (+ ``error_top5.npy``
when the run wrote one) + ``meta.json`` (the maps only: the per-frequency vectors stay in the
run's ``state.npz``), which is what the report and the plots need.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastdino_cli.eval.fourier.basis import FourierResult, radial_profile
from fastdino_cli.fileio import atomic_write, write_text

ERROR = "error.npy"
ERROR_MINUS_CLEAN = "error_minus_clean.npy"
ERROR_TOP5 = "error_top5.npy"
ERROR_TOP5_MINUS_CLEAN = "error_top5_minus_clean.npy"
META = "meta.json"
SUMMARY = "summary.json"
RADIAL = "radial.csv"


@dataclass
class FourierRun:
    """What ``run_fourier_heatmaps`` computed and where it wrote it."""

    labels: list[str]
    """One short unique name per checkpoint; also its sub-folder of ``out``."""
    results: list[FourierResult]
    out: Path
    radial: bool = False
    """Whether the radial profile was asked for (``radial.csv``; the figure draws it too)."""
    files: dict[str, list[Path]] = field(default_factory=dict)
    """Label -> its arrays and meta.json; ``"shared"`` -> summary.json (and radial.csv)."""


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array))


def write_heatmap(folder: Path, result: FourierResult, meta: dict[str, Any]) -> list[Path]:
    """One checkpoint's arrays and ``meta.json`` in ``folder``."""
    files = [
        write_npy(folder / ERROR, result.error),
        write_npy(folder / ERROR_MINUS_CLEAN, result.error_minus_clean),
    ]
    if result.error_top5 is not None:
        files += [
            write_npy(folder / ERROR_TOP5, result.error_top5),
            write_npy(folder / ERROR_TOP5_MINUS_CLEAN, result.error_top5_minus_clean),
        ]
    return [*files, write_json(folder / META, meta)]


def write_radial(path: Path, labels: list[str], results: list[FourierResult]) -> Path:
    """``label,radius,error,error_top5`` rows: the mean top-1 and top-5 error over each ring of
    integer frequency radius (``error_top5`` empty for a result without the top-5 map)."""
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["label", "radius", "error", "error_top5"])
    for label, result in zip(labels, results, strict=True):
        radii, errors = radial_profile(result)
        top5 = radial_profile(result, top5=True)[1] if result.error_top5 is not None else None
        for i, (radius, error) in enumerate(zip(radii, errors, strict=True)):
            e5 = repr(float(top5[i])) if top5 is not None else ""
            rows.writerow([label, int(radius), repr(float(error)), e5])
    return write_text(path, buf.getvalue())


def load_heatmap(folder: str | Path) -> FourierResult:
    """The map of one checkpoint from its ``error.npy`` and ``meta.json``."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    top5 = folder / ERROR_TOP5
    has_top5 = top5.is_file() and meta.get("clean_error_top5") is not None
    return FourierResult(
        error=np.load(folder / ERROR),
        clean_error=float(meta["clean_error"]),
        per_frequency=np.empty(0),
        freqs=np.empty((0, 2), dtype=np.int64),
        axis=np.asarray(meta["axis"]),
        eps=float(meta["eps"]),
        size=int(meta["size"]),
        window=meta.get("window"),
        seed=int(meta.get("seed", 0)),
        n_images=int(meta.get("n_images", 0)),
        error_top5=np.load(top5) if has_top5 else None,
        clean_error_top5=float(meta["clean_error_top5"]) if has_top5 else None,
    )
