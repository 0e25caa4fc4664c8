"""``run_probe``: kNN + linear probes for one or more checkpoints, head stored in the checkpoint.

For each checkpoint: teacher backbone -> cached features of train and val (``features.py``) ->
kNN (``knn.py``) and the linear grid chosen on a held-out part of train (``linear.py``) -> the
chosen head and its recipe into the checkpoint's ``probe`` entry (``classifier.py``) -> a row
of the comparison table, also written to ``probe.json`` beside the checkpoint. Optional rows:
the same architecture at random init (``baseline_random``) and view invariance per
augmentation strategy (``invariance.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from fastdino_cli import checkpoint as ckpt_mod
from fastdino_cli.devices import resolve_device
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.classifier import make_probe_entry, save_probe_entry
from fastdino_cli.eval.features import FeatureRecipe, default_recipe, extract_features, model_hash
from fastdino_cli.eval.labelled import check_same_classes, scan_labelled_folder
from fastdino_cli.eval.probe.knn import DEFAULT_KS, KnnResult, knn_classify
from fastdino_cli.eval.probe.linear import DEFAULT_LRS, LinearResult, linear_probe
from fastdino_cli.fileio import write_text


@dataclass
class ProbeRow:
    """Every number measured for one model (a checkpoint, or its random-init twin)."""

    name: str
    checkpoint: str
    random_init: bool
    recipe: FeatureRecipe
    num_train: int
    num_val: int
    num_classes: int
    knn: list[KnnResult]
    linear: LinearResult
    invariance: dict[str, float] | None = None
    features_cached: bool = False
    seconds: float = 0.0
    stored_in: str | None = None

    def flat(self) -> dict[str, Any]:
        """One table row: plain columns, accuracies in %."""
        row: dict[str, Any] = {"model": self.name}
        for r in self.knn:
            row[f"knn{r.k}"] = round(r.top1, 2)
        best_k = max(self.knn, key=lambda r: r.k)
        row[f"knn{best_k.k}_top5"] = round(best_k.top5, 2)
        row["linear"] = round(self.linear.val_top1, 2)
        row["linear_top5"] = round(self.linear.val_top5, 2)
        row["heldout"] = round(self.linear.holdout_top1, 2)
        row["best_on_val*"] = round(self.linear.best_on_val_top1, 2)
        row["head"] = self.linear.spec.label()
        for strategy, value in (self.invariance or {}).items():
            row[f"inv_{strategy}"] = round(value, 4)
        return row

    def to_dict(self) -> dict[str, Any]:
        lin = self.linear
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "random_init": self.random_init,
            "recipe": self.recipe.to_dict(),
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_classes": self.num_classes,
            "knn": {str(r.k): {"top1": r.top1, "top5": r.top5} for r in self.knn},
            "linear": {
                "top1": lin.val_top1,
                "top5": lin.val_top5,
                "holdout_top1": lin.holdout_top1,
                "head": {
                    "n_last_blocks": lin.spec.n_last_blocks,
                    "avgpool": lin.spec.avgpool,
                    "lr": lin.spec.lr,
                },
                "num_fit": lin.num_fit,
                "num_holdout": lin.num_holdout,
                "best_on_val_top1_optimistic": lin.best_on_val_top1,
                "best_on_val_head": lin.best_on_val_spec.label(),
                "holdout_top1_per_head": dict(lin.holdout_table),
            },
            "invariance": self.invariance,
            "features_cached": self.features_cached,
            "seconds": round(self.seconds, 3),
            "stored_in": self.stored_in,
        }


@dataclass
class ProbeReport:
    """Rows of the comparison table (one per model) and how they were measured."""

    rows: list[ProbeRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Accuracies in %; ``best_on_val*`` is the reference's optimistic head choice on val;
        ``inv_*`` are mean cosine similarities between views (``different-images``: scale)."""
        return pd.DataFrame([r.flat() for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rows": [r.to_dict() for r in self.rows]}


def random_init_backbone(arch: dict[str, Any], seed: int = 0) -> nn.Module:
    """The checkpoint's architecture with fresh weights (seeded, global RNG untouched)."""
    from fastdino_cli.model.vit import build_vit_from_arch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_vit_from_arch(dict(arch)).eval()


def run_probe(
    checkpoints: Sequence[str | Path],
    train: str | Path,
    val: str | Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    epochs: int = 10,
    batch_size: int = 256,
    holdout: float = 0.1,
    n_last_blocks: Sequence[int] = (1, 4),
    lrs: Sequence[float] = DEFAULT_LRS,
    baseline_random: bool = False,
    augment: bool = False,
    invariance: bool = False,
    invariance_images: int = 64,
    invariance_views: int = 4,
    out: str | Path | None = None,
    write: bool = True,
    use_cache: bool = True,
    resize: int | None = None,
    crop: int | None = None,
    device: str | torch.device | None = "auto",
    num_workers: int = 0,
    extract_batch_size: int = 128,
    seed: int = 0,
) -> ProbeReport:
    """Probe every checkpoint; store each chosen head (unless ``write=False``); one report."""
    if not checkpoints:
        raise ConfigError("give at least one checkpoint to probe")
    if out is not None and len(checkpoints) != 1:
        raise ConfigError(f"--out {out} needs exactly one checkpoint, got {len(checkpoints)}")
    if any(int(k) < 1 for k in ks):
        raise ConfigError(f"--k values must be positive integers, got {list(ks)}")
    if any(int(b) < 1 for b in n_last_blocks):
        raise ConfigError(f"--n-last-blocks must be positive, got {list(n_last_blocks)}")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"--holdout {holdout} must be strictly between 0 and 1")
    dev = resolve_device(device)
    train_folder = scan_labelled_folder(train, what="train")
    val_folder = scan_labelled_folder(val, what="val")
    check_same_classes(train_folder, val_folder)
    settings = {
        "train": str(train),
        "val": str(val),
        "ks": [int(k) for k in ks],
        "epochs": epochs,
        "batch_size": batch_size,
        "holdout": holdout,
        "n_last_blocks": [int(b) for b in n_last_blocks],
        "lrs": [float(x) for x in lrs],
        "seed": seed,
        "linear_mode": "augmented views" if augment else "cached features",
        "device": str(dev),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    rows: list[ProbeRow] = []
    for path in checkpoints:
        backbone, ckpt = ckpt_mod.load_teacher_backbone(path, device=dev)
        recipe = default_recipe(ckpt, resize=resize, crop=crop)
        models: list[tuple[str, nn.Module, bool]] = [(str(path), backbone, False)]
        if baseline_random:
            rand = random_init_backbone(ckpt["arch"], seed).to(dev)
            models.append((f"{path} (random init)", rand, True))
        per_ckpt = []
        for name, model, is_random in models:
            t0 = time.perf_counter()
            row = _probe_one(
                name, str(path), model, is_random, train_folder, val_folder, recipe,
                ks=ks, epochs=epochs, batch_size=batch_size, holdout=holdout, augment=augment,
                n_last_blocks=n_last_blocks, lrs=lrs, use_cache=use_cache, device=dev,
                num_workers=num_workers, extract_batch_size=extract_batch_size, seed=seed,
            )  # fmt: skip
            if invariance:
                from fastdino_cli.eval.probe.invariance import measure_invariance

                row.invariance = measure_invariance(
                    model, val_folder, recipe, ckpt.get("config") or {},
                    num_images=invariance_images, num_views=invariance_views, seed=seed,
                    device=dev,
                )  # fmt: skip
            row.seconds = time.perf_counter() - t0
            per_ckpt.append(row)
        main = per_ckpt[0]
        if write:
            stored = _store_head(path, main, train_folder.class_names, settings, out)
            main.stored_in = str(stored)
            _write_results_json(Path(out) if out else Path(path), per_ckpt)
        rows.extend(per_ckpt)
        del backbone, models
    return ProbeReport(rows=rows, settings=settings)


def _probe_one(
    name: str,
    checkpoint: str,
    model: nn.Module,
    is_random: bool,
    train_folder,
    val_folder,
    recipe: FeatureRecipe,
    *,
    ks: Sequence[int],
    epochs: int,
    batch_size: int,
    holdout: float,
    augment: bool,
    n_last_blocks: Sequence[int],
    lrs: Sequence[float],
    use_cache: bool,
    device: torch.device,
    num_workers: int,
    extract_batch_size: int,
    seed: int,
) -> ProbeRow:
    n_extract = max(int(b) for b in n_last_blocks)
    mhash = model_hash(model) if use_cache else None
    kw = dict(
        n_blocks=n_extract, batch_size=extract_batch_size, device=device,
        num_workers=num_workers, use_cache=use_cache, backbone_hash=mhash,
    )  # fmt: skip
    tr = extract_features(model, train_folder, recipe, desc=f"train features {name}", **kw)
    va = extract_features(model, val_folder, recipe, desc=f"val features {name}", **kw)
    knn = knn_classify(
        tr.last_cls, tr.labels, va.last_cls, va.labels, ks=ks,
        num_classes=len(tr.class_names), device=device,
    )  # fmt: skip
    common = dict(n_last_blocks=n_last_blocks, lrs=lrs, holdout=holdout, epochs=epochs,
                  batch_size=batch_size, seed=seed, device=device)  # fmt: skip
    if augment:
        from fastdino_cli.eval.probe.linear_augment import linear_probe_augmented

        lin = linear_probe_augmented(
            model, train_folder, va, recipe, num_workers=num_workers, use_cache=use_cache,
            backbone_hash=mhash, **common,
        )  # fmt: skip
    else:
        lin = linear_probe(tr, va, **common)
    return ProbeRow(
        name=name,
        checkpoint=checkpoint,
        random_init=is_random,
        recipe=recipe,
        num_train=len(tr),
        num_val=len(va),
        num_classes=len(tr.class_names),
        knn=knn,
        linear=lin,
        features_cached=tr.cached and va.cached,
    )


def _store_head(
    path: str | Path,
    row: ProbeRow,
    class_names: list[str],
    settings: dict[str, Any],
    out: str | Path | None,
) -> Path:
    lin = row.linear
    entry = make_probe_entry(
        weight=lin.weight,
        bias=lin.bias,
        n_last_blocks=lin.spec.n_last_blocks,
        avgpool=lin.spec.avgpool,
        lr=lin.spec.lr,
        recipe=row.recipe,
        class_names=class_names,
        accuracy={
            "linear_top1": lin.val_top1,
            "linear_top5": lin.val_top5,
            "holdout_top1": lin.holdout_top1,
            "best_on_val_top1_optimistic": lin.best_on_val_top1,
            "knn": {str(r.k): {"top1": r.top1, "top5": r.top5} for r in row.knn},
        },
        protocol={**settings, "num_fit": lin.num_fit, "num_holdout": lin.num_holdout,
                  "num_val": row.num_val},
    )  # fmt: skip
    return save_probe_entry(path, entry, out)


def _write_results_json(ckpt_path: Path, rows: list[ProbeRow]) -> Path:
    """``probe.json`` beside the checkpoint, keyed by checkpoint file name (other keys kept)."""
    target = ckpt_path.parent / "probe.json"
    data: dict[str, Any] = {}
    if target.is_file():
        try:
            data = json.loads(target.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
    data[ckpt_path.name] = [r.to_dict() for r in rows]
    return write_text(target, json.dumps(data, indent=2) + "\n")
