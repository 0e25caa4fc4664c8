"""`fastdino fourier-heatmap` as a library call: checkpoints + labelled folder -> numbers on disk.

``run_fourier_heatmaps`` is what the CLI calls and what a notebook can call with the same
arguments. It loads every checkpoint's stored probe head first (so a checkpoint without one
fails before hours of work), picks the evaluation images (N per class under a seed, as Yin et
al. and the FastDINOv2 analysis do with 5 per class), computes each heatmap with
``basis.compute_fourier_heatmap`` (resumable through ``<out>/<label>/state.npz``) and writes
the arrays and metadata laid out in ``result.py``. It draws nothing: the PNGs
(``<label>/heatmap.png``, ``side_by_side.png``, ``radial.png``) come from ``draw_fourier_run``
of the drawing package.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastdino_cli.devices import resolve_device
from fastdino_cli.errors import ConfigError, DataError
from fastdino_cli.eval.fourier.basis import (
    compute_fourier_heatmap,
    default_eps,
    half_plane_frequencies,
)
from fastdino_cli.eval.fourier.result import (
    RADIAL,
    SUMMARY,
    FourierRun,
    write_heatmap,
    write_json,
    write_radial,
)
from fastdino_cli.eval.outputs import check_output_dir

EPS_CONVENTION = (
    "L2 norm per channel of the perturbation in [0,1] pixel space; default 15.7*size/224 "
    "(Yin et al.'s ImageNet value at 224 px, same per-pixel amplitude at any size)"
)


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the file stem, with the run folder when stems collide."""
    stems = [p.stem for p in paths]
    labels = [
        f"{p.parent.name}-{p.stem}" if stems.count(p.stem) > 1 and p.parent.name else p.stem
        for p in paths
    ]
    return [f"{lab}-{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def select_images(
    labels: Sequence[int], *, images_per_class: int | None, max_images: int | None, seed: int
) -> list[int]:
    """Indices of N random images per class (seeded), class-major; at most ``max_images``.

    ``max_images`` keeps classes balanced: it takes images round-robin over the classes.
    """
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    per_class = []
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        if images_per_class is not None:
            idx = np.sort(rng.permutation(idx)[:images_per_class])
        per_class.append(list(idx))
    if max_images is not None:
        picked: list[int] = []
        for rank in range(max(len(p) for p in per_class)):
            picked += [p[rank] for p in per_class if rank < len(p)]
        keep = set(picked[:max_images])
        per_class = [[i for i in p if i in keep] for p in per_class]
    return [int(i) for p in per_class for i in p]


def load_eval_images(
    data: str | Path,
    class_names: Sequence[str],
    recipe: Any,
    *,
    images_per_class: int | None,
    max_images: int | None,
    seed: int,
) -> tuple[Tensor, Tensor, list[str], str]:
    """Images in [0, 1] after the eval transform, labels in the probe's class order.

    Returns (images (M, 3, S, S), labels (M,), relative paths, folder fingerprint).
    """
    from fastdino_cli.data.labelled import scan_labelled_folder
    from fastdino_cli.eval.features import eval_transform

    folder = scan_labelled_folder(data, what="--data")
    missing = [c for c in folder.class_names if c not in class_names]
    if missing:
        raise DataError(
            f"--data {data} has classes the probe head does not know ({', '.join(missing[:5])}); "
            "use the folder layout the probe was trained on"
        )
    index = {name: i for i, name in enumerate(class_names)}
    chosen = select_images(
        folder.labels, images_per_class=images_per_class, max_images=max_images, seed=seed
    )
    transform = eval_transform(recipe, normalize=False)
    images = torch.stack([transform(folder.load_rgb(i)) for i in chosen])
    labels = torch.tensor([index[folder.class_names[folder.labels[i]]] for i in chosen])
    rel = [os.path.relpath(folder.paths[i], folder.root) for i in chosen]
    return images, labels, rel, folder.fingerprint()


def _probe_identity(clf: Any) -> dict[str, Any]:
    h = hashlib.sha256()
    for t in (clf.head.weight, clf.head.bias):
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {
        "head_sha256": h.hexdigest(),
        "n_classes": len(clf.class_names),
        "n_last_blocks": int(clf.n_last_blocks),
        "avgpool": bool(clf.avgpool),
        "recipe": clf.recipe.to_dict(),
        "precision": clf.precision.to_dict(),
    }


def run_fourier_heatmaps(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    eps: float | None = None,
    size: int | None = None,
    window: int | None = None,
    images_per_class: int | None = 5,
    max_images: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    radial: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> FourierRun:
    """Fourier heatmaps of several checkpoints on one image set; the numbers written to ``out``.

    Every checkpoint is evaluated at the same ``size`` (default: the first probe's crop size)
    so their maps share one grid and one colour scale. ``radial`` also writes the mean error
    per frequency radius (``radial.csv``) and marks the run for the radial figure. Each
    classifier runs with the precision policy its probe head was trained with
    (``features.Precision``, recorded in ``meta.json``), as ``probe`` and ``corrupt-eval`` do.
    """
    from fastdino_cli.eval.classifier import load_probe_classifier

    paths = [Path(p) for p in checkpoints]
    if not paths:
        raise ConfigError("give at least one checkpoint")
    for name, value in (("--images-per-class", images_per_class), ("--max-images", max_images)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} {value} must be at least 1")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise ConfigError(f"--eps {eps} must be a positive number")
    out_dir = check_output_dir(out)
    dev = resolve_device(device)
    classifiers = [load_probe_classifier(p, device="cpu") for p in paths]  # fail fast, no probe
    size = check_size(size, paths, classifiers)
    half_plane_frequencies(size, window)  # validates the window before any work
    eps = default_eps(size) if eps is None else float(eps)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = checkpoint_labels(paths)
    run = FourierRun(labels=labels, results=[], out=out_dir, radial=radial, files={})
    cache: dict[tuple, tuple[Tensor, Tensor, list[str], str]] = {}

    for path, label, clf in zip(paths, labels, classifiers, strict=True):
        recipe = clf.recipe
        if size != recipe.crop_size:  # keep the probe's resize / crop ratio at the new size
            resize = round(size * recipe.resize_size / recipe.crop_size)
            recipe = dataclasses.replace(recipe, crop_size=size, resize_size=resize)
        key = (recipe.resize_size, recipe.crop_size, recipe.interpolation, tuple(clf.class_names))
        if key not in cache:
            cache[key] = load_eval_images(
                data,
                clf.class_names,
                recipe,
                images_per_class=images_per_class,
                max_images=max_images,
                seed=seed,
            )
        images, targets, rel_paths, fingerprint = cache[key]
        sha = file_sha256(path)
        probe_id = _probe_identity(clf)
        clf.to(dev)

        def classify(x: Tensor, clf=clf) -> Tensor:  # under the probe's precision policy
            return clf.forward_pixels(x).float()

        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = compute_fourier_heatmap(
            classify,
            images.to(dev),
            targets.to(dev),
            eps=eps,
            window=window,
            seed=seed,
            batch_size=batch_size,
            state_path=folder / "state.npz",
            identity={"checkpoint_sha256": sha, "probe": probe_id},
            progress=progress,
            description=label,
        )
        seconds = time.perf_counter() - t0
        clf.to("cpu")
        meta = {
            "checkpoint": str(path),
            "checkpoint_sha256": sha,
            "label": label,
            "probe": probe_id,
            "eps": eps,
            "eps_convention": EPS_CONVENTION,
            "size": size,
            "window": window,
            "seed": seed,
            "n_images": result.n_images,
            "images_per_class": images_per_class,
            "max_images": max_images,
            "data": str(data),
            "data_fingerprint": fingerprint,
            "images": rel_paths,
            "n_bases": int(len(result.freqs)),
            "clean_error": result.clean_error,
            "mean_error": float(np.nanmean(result.error)),
            "clean_error_top5": result.clean_error_top5,
            "mean_error_top5": float(np.nanmean(result.error_top5)),
            "axis": [int(a) for a in result.axis],
            "map_layout": "rows = vertical frequency, columns = horizontal, DC at the centre",
            "batch_size": batch_size,
            "device": str(dev),
            "precision": clf.precision.to_dict(),
            "seconds_this_call": round(seconds, 3),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
        }
        run.files[label] = write_heatmap(folder, result, meta)
        run.results.append(result)

    summary = {
        "eps": eps,
        "size": size,
        "window": window,
        "seed": seed,
        "checkpoints": [
            {
                "label": lab,
                "checkpoint": str(p),
                "clean_error": r.clean_error,
                "mean_error": float(np.nanmean(r.error)),
                "clean_error_top5": r.clean_error_top5,
                "mean_error_top5": float(np.nanmean(r.error_top5)),
            }
            for lab, p, r in zip(labels, paths, run.results, strict=True)
        ],
    }
    run.files["shared"] = [write_json(out_dir / SUMMARY, summary)]
    if radial:
        run.files["shared"].append(write_radial(out_dir / RADIAL, labels, run.results))
    return run


def check_size(size: int | None, paths: Sequence[Path], classifiers: Sequence[Any]) -> int:
    """The evaluation size: ``size``, else the first probe's crop size; it must be a positive
    multiple of every checkpoint's patch size (0 is not "the default")."""
    default = int(classifiers[0].image_size)
    if size is None:
        size = default
    for p, clf in zip(paths, classifiers, strict=True):
        patch = int(clf.backbone.patch_size)
        if size < 1 or size % patch:
            raise ConfigError(
                f"--size {size} is not a valid image size for {p}: give a positive multiple of "
                f"its patch size {patch} ({patch}, {2 * patch}, {3 * patch}, ...), or leave "
                f"--size out for the probe's crop size {default}"
            )
    return int(size)
