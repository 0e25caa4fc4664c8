"""What a fourier-heatmap run wrote, and how it is read back.

Layout under the run's ``out`` folder (numbers only; the plots are drawn from these by
``draw_fourier_run`` of the drawing package)::

    <out>/<label>/error.npy               top-1 error per frequency, DC at the centre
    <out>/<label>/error_minus_clean.npy   the same minus the clean error
    <out>/<label>/meta.json               eps, size, window, seed, images, checkpoint hash, probe
    <out>/radial.csv                      (radial=True) mean error per frequency radius
    <out>/summary.json                    the shared settings and each checkpoint's clean error

:func:`load_heatmap` rebuilds a :class:`FourierResult` from ``error.npy`` + ``meta.json`` (the
map only: the per-frequency vectors stay in the run's ``state.npz``), which is what the report
and the plots need.
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
    return [
        write_npy(folder / ERROR, result.error),
        write_npy(folder / ERROR_MINUS_CLEAN, result.error_minus_clean),
        write_json(folder / META, meta),
    ]


def write_radial(path: Path, labels: list[str], results: list[FourierResult]) -> Path:
    """``label,radius,error`` rows: the mean error over each ring of integer frequency radius."""
    buf = io.StringIO()
    rows = csv.writer(buf, lineterminator="\n")
    rows.writerow(["label", "radius", "error"])
    for label, result in zip(labels, results, strict=True):
        for radius, error in zip(*radial_profile(result), strict=True):
            rows.writerow([label, int(radius), repr(float(error))])
    return write_text(path, buf.getvalue())


def load_heatmap(folder: str | Path) -> FourierResult:
    """The map of one checkpoint from its ``error.npy`` and ``meta.json``."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
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
    )
