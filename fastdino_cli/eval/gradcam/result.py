"""What a Grad-CAM run computed, the files it writes and how the report reads them back.

Layout under the run's output folder (numbers only; ``draw_gradcam`` of the drawing package
draws ``gradcam.png`` from a result)::

    <out>/gradcam.json                      method, target, layer, images, one entry per column
    <out>/maps/<column>/<NNN>_<image>.npy   one (H, W) float32 map in [0, 1] per image
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastdino_cli.errors import DataError
from fastdino_cli.eval.gradcam.inputs import Sample
from fastdino_cli.fileio import atomic_write, write_text

META = "gradcam.json"
MAPS = "maps"


@dataclass
class CheckpointMaps:
    """One figure column: a checkpoint's maps and what each explains."""

    name: str
    path: str | None
    maps: np.ndarray
    """(N, H, W) float32 in [0, 1], one per image, the size of the network input."""
    predicted: list[str | None]
    """The probe's predicted class per image (None without a probe)."""
    confidence: list[float | None]
    explained: list[str]
    """Per image, e.g. ``class cat``, ``cos to prototype cat``, ``own embedding``."""
    score: list[float | None]
    """The target's value: softmax probability of the class, or the cosine."""
    target_layers: list[str] = field(default_factory=list)
    """The layers whose maps were averaged (``--layer probe`` differs per checkpoint)."""


@dataclass
class GradCamResult:
    samples: list[Sample]
    pixels: np.ndarray
    """(N, H, W, 3) float32 in [0, 1]: exactly what the networks saw, before normalising."""
    columns: list[CheckpointMaps]
    method: str
    target: str
    target_layer: str
    files: list[Path] = field(default_factory=list)
    """What ``run_gradcam(..., out=...)`` wrote (empty without ``out``)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def write_gradcam(result: GradCamResult, out_dir: str | Path) -> list[Path]:
    """Write ``gradcam.json`` and one ``.npy`` per map (atomically); returns the paths."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create output folder {out}: {e.strerror or e}") from None
    files: list[Path] = []
    meta_cols = []
    for c in result.columns:
        folder = out / MAPS / _slug(c.name)
        folder.mkdir(parents=True, exist_ok=True)
        npys = []
        for i, (s, cam) in enumerate(zip(result.samples, c.maps, strict=True)):
            f = folder / f"{i:03d}_{_slug(s.path.stem)}.npy"
            atomic_write(f, lambda fh, a=cam.astype(np.float32): np.save(fh, a))
            npys.append(str(f.relative_to(out)))
            files.append(f)
        meta_cols.append(
            {
                "name": c.name,
                "checkpoint": c.path,
                "maps": npys,
                "predicted": c.predicted,
                "confidence": c.confidence,
                "explained": c.explained,
                "score": c.score,
                "target_layers": c.target_layers,
            }
        )
    meta = {
        "method": result.method,
        "target": result.target,
        "target_layer": result.target_layer,
        "image_size": list(result.pixels.shape[1:3]),
        "images": [str(s.path) for s in result.samples],
        "true_class": [s.true_class for s in result.samples],
        "columns": meta_cols,
    }
    files.append(write_text(out / META, json.dumps(meta, indent=2)))
    return files


def load_columns(meta: dict, folder: str | Path) -> list[CheckpointMaps]:
    """The columns of a ``gradcam.json`` (already parsed), with the maps stored beside it."""
    folder = Path(folder)
    return [
        CheckpointMaps(
            col["name"],
            col.get("checkpoint"),
            np.stack([np.load(folder / m) for m in col["maps"]]),
            col["predicted"],
            col["confidence"],
            col["explained"],
            col["score"],
            col.get("target_layers") or [meta.get("target_layer", "")],
        )
        for col in meta["columns"]
    ]


def load_gradcam(meta: dict, folder: str | Path) -> GradCamResult:
    """A result from a ``gradcam.json`` (already parsed) and the maps beside it.

    The images are read again and cropped by the probes' eval transform at the stored size.
    """
    from fastdino_cli.eval.gradcam.inputs import load_pixels, sized_transform

    samples = [Sample(Path(p), c) for p, c in zip(meta["images"], meta["true_class"], strict=True)]
    pixels = load_pixels(samples, sized_transform(int(meta["image_size"][0])))
    return GradCamResult(
        samples=samples,
        pixels=pixels.permute(0, 2, 3, 1).numpy().astype(np.float32),
        columns=load_columns(meta, folder),
        method=meta["method"],
        target=meta["target"],
        target_layer=meta["target_layer"],
    )
