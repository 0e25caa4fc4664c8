"""ImageNet-C evaluation: top-1/top-5 per corruption and severity, means, mCE, several models.

Two sources of corrupted images:

* ``imagenet_c=ROOT``: the released data (or FastDINOv2's ``val/`` variant), read through a
  centre crop to the classifier's input size (hendrycks' ``test.py`` protocol; no resize of the
  224 px images) unless ``resize_c=True``; clean accuracy from an optional ``clean=DIR``.
* ``val=DIR``: a clean labelled folder, cropped with the classifier's own eval transform,
  corrupted on the fly in data-loader workers (deterministic under ``seed``) and put through a
  JPEG quality-85 round trip as the released files were (``jpeg=False`` skips it), optionally
  stored with ``write_c=OUT`` in the released layout. Its mCE is marked as not the published
  benchmark (the ``benchmark`` column, a note): AlexNet's errors were measured on the files.

With ``clean=DIR`` the clean images are always read with the model's own eval transform
(Resize 256 -> centre crop 224 for a 224 px probe, hendrycks' ``test.py``), never with the
corrupted images' centre crop. A probe whose input is not 224 px gets a one-line warning in crop
mode: FastDINOv2 evaluated ImageNet-C with Resize 256 -> 224 (``resize_c=True``).

:func:`run_corrupt_eval` is ``fastdino corrupt-eval`` as one call: it classifies with the probe
head stored in each checkpoint (:func:`fastdino_cli.eval.classifier.load_probe_classifier`),
chosen on clean data, and with ``out`` writes the numbers (``result.write_results``). A notebook
can call :func:`evaluate_classifiers` with any model exposing ``class_names`` and mapping
[0, 1] pixels to logits. Nothing here draws: the drawing package does (``draw_corrupt_eval``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.data import (
    CLEAN,
    CorruptedSet,
    FileSet,
    Sample,
    Task,
    find_imagenet_c,
    list_labelled_images,
    resolve_transform,
    worker_init,
)
from fastdino_cli.eval.corruption.metrics import (
    corruption_errors,
    mce,
    mce_unavailable_reason,
    relative_mce,
)
from fastdino_cli.eval.corruption.registry import ALL, BENCHMARK, EXTRA, group_of, parse_corruptions
from fastdino_cli.eval.corruption.registry import parse_severities as _parse_severities
from fastdino_cli.eval.corruption.result import RELEASED, CorruptEvalResult, write_results
from fastdino_cli.eval.outputs import check_output_dir


def _label_map(model_classes: list[str], data_classes: list[str], labels: dict[str, str], where):
    """Index in the model's classes of each data class (by folder name or labels.txt name)."""
    index = {name: i for i, name in enumerate(model_classes)}
    out = []
    for name in data_classes:
        if name in index:
            out.append(index[name])
        elif labels.get(name) in index:
            out.append(index[labels[name]])
        else:
            shown = ", ".join(model_classes[:5]) + (" ..." if len(model_classes) > 5 else "")
            raise DataError(
                f"class {name!r} in {where} is not one of the probe's {len(model_classes)} "
                f"classes ({shown}); evaluate on data with the classes the probe was trained on"
            )
    return out


def _forward(model, x: torch.Tensor) -> torch.Tensor:
    fn = getattr(model, "forward_pixels", None) or model
    return fn(x)


def _count(models: dict, loader, n_tasks: int, device: str, maps: dict) -> dict[str, np.ndarray]:
    """Correct top-1 / top-5 counts and totals per task, for every model on the same batches."""
    counts = {name: np.zeros((n_tasks, 3), dtype=np.int64) for name in models}
    with torch.inference_mode():
        for x, label, task in loader:
            x = x.to(device)
            for name, model in models.items():
                logits = _forward(model, x).float().cpu()
                y = torch.as_tensor(maps[name])[label]
                k = min(5, logits.shape[1])
                topk = logits.topk(k, dim=1).indices
                hit1 = (topk[:, 0] == y).numpy()
                hit5 = (topk == y[:, None]).any(dim=1).numpy()
                t = task.numpy()
                np.add.at(counts[name][:, 0], t, hit1)
                np.add.at(counts[name][:, 1], t, hit5)
                np.add.at(counts[name][:, 2], t, 1)
    return counts


def evaluate_classifiers(
    models: dict[str, object],
    *,
    imagenet_c: str | Path | None = None,
    val: str | Path | None = None,
    clean: str | Path | None = None,
    write_c: str | Path | None = None,
    corruptions: str | list[str] | None = None,
    severities: str | list[int] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    max_per_class: int | None = None,
    resize_c: bool = False,
    jpeg: bool = True,
) -> CorruptEvalResult:
    """Evaluate named classifiers on corrupted images; see the module docstring for the modes."""
    if (imagenet_c is None) == (val is None):
        raise DataError("give exactly one of --imagenet-c ROOT (released data) or --val DIR")
    if write_c is not None and val is None:
        raise DataError("--write-c needs --val DIR (it stores the on-the-fly corrupted set)")
    if not models:
        raise DataError("no checkpoint given; pass one or more checkpoints with a probe head")
    names = parse_corruptions(corruptions)
    levels = _parse_severities(severities)
    loader_kw = dict(batch_size=batch_size, num_workers=workers, worker_init_fn=worker_init)
    if workers > 0:
        loader_kw["persistent_workers"] = False
    rows: list[dict] = []
    meta = {
        "mode": "imagenet-c" if imagenet_c is not None else "val",
        "source": str(imagenet_c if imagenet_c is not None else val),
        "clean": str(clean) if clean is not None else (str(val) if val is not None else None),
        "corruptions": names,
        "severities": levels,
        "seed": seed,
        "transform": {},
        "benchmark": RELEASED if imagenet_c is not None else _on_the_fly(jpeg),
    }
    if val is not None:
        meta["jpeg_q85"] = jpeg
    if val is not None:
        samples = list_labelled_images(val, max_per_class)
        tasks = [Task(CLEAN, 0)] + [Task(c, s) for c in names for s in levels]
        for g, group in enumerate(_group_by_transform(models, crop_only=False)):
            transform = resolve_transform(models[group[0]], "model")
            data_classes = [s.class_name for s in samples]
            maps = {n: _label_map(models[n].class_names, data_classes, {}, val) for n in group}
            labels = list(range(len(samples)))
            out = Path(write_c) if write_c is not None and g == 0 else None  # one copy
            ds = CorruptedSet(samples, labels, tasks, transform, seed, out, jpeg=jpeg)
            loader = torch.utils.data.DataLoader(ds, shuffle=False, **loader_kw)
            counts = _count({n: models[n] for n in group}, loader, len(tasks), device, maps)
            rows += _rows(counts, tasks)
            for n in group:
                meta["transform"][n] = (
                    f"model eval transform ({_describe(models[n])}), then corrupt"
                    + (", then JPEG quality 85" if jpeg else "")
                )
    else:
        sets, labels_txt = find_imagenet_c(imagenet_c, names, levels, max_per_class)
        if clean is not None:
            sets = {Task(CLEAN, 0): list_labelled_images(clean, max_per_class), **sets}
        tasks = list(sets)
        mode = "model" if resize_c else "crop"
        if not resize_c:
            _warn_small_input(models, meta)
        # clean images always go through the model's own eval transform (hendrycks' test.py:
        # Resize 256 -> CenterCrop 224); so with --clean, models share a pass only when their
        # eval transforms agree too
        for group in _group_by_transform(models, crop_only=not resize_c and clean is None):
            transform = resolve_transform(models[group[0]], mode)
            clean_transform = resolve_transform(models[group[0]], "model") if clean else None
            items, maps = _file_items(sets, models, group, labels_txt, imagenet_c)
            per_task = {0: clean_transform} if clean_transform is not None else {}
            ds = FileSet(items, transform, per_task)
            loader = torch.utils.data.DataLoader(ds, shuffle=False, **loader_kw)
            counts = _count({n: models[n] for n in group}, loader, len(tasks), device, maps)
            rows += _rows(counts, tasks)
            for n in group:
                meta["transform"][n] = (
                    f"model eval transform ({_describe(models[n])})"
                    if resize_c
                    else f"centre crop {getattr(models[n], 'image_size', 224)} (no resize)"
                )
                if clean is not None:
                    meta.setdefault("clean_transform", {})[n] = (
                        f"model eval transform ({_describe(models[n])})"
                    )
    table = pd.DataFrame(rows)
    return _summarise(table, models, meta)


ON_THE_FLY_NOTE = (
    "mCE from on-the-fly corruptions is not the published ImageNet-C benchmark: AlexNet's "
    "errors were measured on the released JPEG files"
)


def _on_the_fly(jpeg: bool) -> str:
    """The ``benchmark`` column of an on-the-fly run (mCE there is comparable only roughly)."""
    step = "JPEG q85 round trip" if jpeg else "no JPEG step"
    return f"on-the-fly corruptions ({step}), not the published benchmark"


REFERENCE_INPUT = 224
"""Side of the released ImageNet-C images (and of the crop hendrycks' ``test.py`` takes)."""


def _warn_small_input(models: dict, meta: dict) -> None:
    """One line per model whose input is not 224 px: a crop shows only part of each image.

    FastDINOv2 evaluated its 112/224 px models on ImageNet-C with Resize 256 -> 224
    (``--resize-c``); a centre crop of another size compares a different field of view.
    """
    for name, model in models.items():
        size = int(getattr(model, "image_size", REFERENCE_INPUT))
        if size == REFERENCE_INPUT:
            continue
        seen = (
            f"sees only the centre {size} px of each {REFERENCE_INPUT} px image"
            if size < REFERENCE_INPUT
            else f"sees each {REFERENCE_INPUT} px image upscaled"
        )
        line = (
            f"{name}: the probe's input is {size} px, not {REFERENCE_INPUT}, so in crop mode it "
            f"{seen}; FastDINOv2 evaluated with Resize 256 -> 224 (--resize-c)"
        )
        meta.setdefault("warnings", []).append(line)
        print(f"fastdino: warning: {line}", file=sys.stderr)


def _file_items(sets: dict[Task, list[Sample]], models, group, labels_txt, root):
    """Flatten all tasks' files into one list; labels index a per-sample class table."""
    items: list[tuple[Path, int, int]] = []
    classes: list[str] = []
    for t, task in enumerate(sets):
        for s in sets[task]:
            items.append((s.path, len(classes), t))
            classes.append(s.class_name)
    unique = sorted(set(classes))
    maps = {}
    for n in group:
        indices = _label_map(models[n].class_names, unique, labels_txt, root)
        per_class = dict(zip(unique, indices, strict=True))
        maps[n] = [per_class[c] for c in classes]
    return items, maps


def _group_by_transform(models: dict, crop_only: bool) -> list[list[str]]:
    """Models that see identical input crops share one pass over the (corrupted) data.

    A centre crop depends on the input size only; a model's own eval transform is assumed to
    be fixed by (image_size, resize_size) when it exposes both, else the model runs alone.
    """
    groups: dict[tuple, list[str]] = {}
    for name, model in models.items():
        size, resize = getattr(model, "image_size", 224), getattr(model, "resize_size", None)
        if crop_only:
            key: tuple = (size,)
        else:
            key = (size, resize) if resize is not None else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def _describe(model) -> str:
    size, resize = getattr(model, "image_size", "?"), getattr(model, "resize_size", None)
    return f"resize {resize}, centre crop {size}" if resize else f"{size} px"


def _rows(counts: dict[str, np.ndarray], tasks: list[Task]) -> list[dict]:
    rows = []
    for name, c in counts.items():
        for t, task in enumerate(tasks):
            n = int(c[t, 2])
            if n == 0:
                continue
            rows.append(
                {
                    "model": name,
                    "corruption": task.corruption,
                    "group": CLEAN if task.corruption == CLEAN else group_of(task.corruption),
                    "severity": task.severity,
                    "top1": c[t, 0] / n,
                    "top5": c[t, 1] / n,
                    "n": n,
                }
            )
    return rows


def _summarise(table: pd.DataFrame, models: dict, meta: dict) -> CorruptEvalResult:
    cells = table[table["corruption"] != CLEAN].reset_index(drop=True)
    clean_rows = table[table["corruption"] == CLEAN].set_index("model")
    notes: list[str] = []
    summary = []
    for name, model in models.items():
        mine = cells[cells["model"] == name]
        top1 = {(r.corruption, r.severity): r.top1 for r in mine.itertuples()}
        per_c = mine.groupby("corruption")["top1"].mean()
        has_clean = name in clean_rows.index
        row = {
            "model": name,
            "clean_top1": float(clean_rows.loc[name, "top1"]) if has_clean else np.nan,
            "clean_top5": float(clean_rows.loc[name, "top5"]) if has_clean else np.nan,
            "mean_benchmark": _mean(per_c, BENCHMARK),
            "mean_extra": _mean(per_c, EXTRA),
            "mean_all": _mean(per_c, ALL),
            "mCE": np.nan,
            "relative_mCE": np.nan,
            "benchmark": meta.get("benchmark", RELEASED),
        }
        why_mce, why_rel = mce_unavailable_reason(list(model.class_names), set(top1), has_clean)
        errors = corruption_errors(top1)
        if why_mce is None:
            row["mCE"] = mce(errors)
        if why_rel is None:
            row["relative_mCE"] = relative_mce(errors, 1.0 - row["clean_top1"])
        for why in {why_mce, why_rel} - {None}:
            note = f"{name}: mCE not shown: {why}" if why == why_mce else f"{name}: {why}"
            notes.append(note)
        if meta.get("mode") == "val" and (why_mce is None or why_rel is None):
            notes.append(f"{name}: {ON_THE_FLY_NOTE}")
        summary.append(row)
    return CorruptEvalResult(cells, pd.DataFrame(summary), notes, meta)


def _mean(per_c: pd.Series, subset: tuple[str, ...]) -> float:
    chosen = [per_c[c] for c in subset if c in per_c.index]
    return float(np.mean(chosen)) if chosen else np.nan


def run_corrupt_eval(
    checkpoints: Sequence[str | Path],
    *,
    imagenet_c: str | Path | None = None,
    val: str | Path | None = None,
    clean: str | Path | None = None,
    write_c: str | Path | None = None,
    corruptions: str | list[str] | None = "all",
    severities: str | list[int] | None = "1-5",
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    max_per_class: int | None = None,
    resize_c: bool = False,
    jpeg: bool = True,
    out: str | Path | None = None,
) -> CorruptEvalResult:
    """``fastdino corrupt-eval`` as one call: every checkpoint's stored probe classifier on the
    corrupted images (see the module docstring for the two sources).

    With ``out``, the numbers are also written there (``cells.csv``, ``summary.csv``,
    ``results.json``; ``result.files`` lists them); the plots are drawn from the result by
    ``draw_corrupt_eval`` of the drawing package.
    """
    from fastdino_cli.devices import resolve_device
    from fastdino_cli.eval.classifier import load_probe_classifier

    if out is not None:
        check_output_dir(out)  # before the evaluation, not after it
    dev = str(resolve_device(device))
    models: dict[str, object] = {}
    for path in checkpoints:
        name = Path(path).stem if Path(path).stem not in models else str(path)
        models[name] = load_probe_classifier(path, device=dev)
    result = evaluate_classifiers(
        models, imagenet_c=imagenet_c, val=val, clean=clean, write_c=write_c,
        corruptions=corruptions, severities=severities, seed=seed, batch_size=batch_size,
        workers=workers, device=dev, max_per_class=max_per_class, resize_c=resize_c, jpeg=jpeg,
    )  # fmt: skip
    if out is not None:
        result.files = write_results(result, out)
    return result
