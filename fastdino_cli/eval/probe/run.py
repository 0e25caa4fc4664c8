"""``run_probe``: kNN + linear probes for one or more checkpoints, head stored in the checkpoint.

For each checkpoint: teacher backbone -> cached features of train and val (``features.py``) ->
kNN (``knn.py``) and the linear grid chosen on a held-out part of train (``linear.py``) -> the
chosen head and its recipe into the checkpoint's ``probe`` entry (``classifier.py``) -> a row
of the comparison table, also written to ``probe.json`` beside the checkpoint. Optional rows:
the same architecture at random init (``baseline_random``) and view invariance per
augmentation strategy (``invariance.py``).

Every row also holds the per-class accuracy and the top confusions on val (``perclass.py``,
written to ``probe/<checkpoint stem>_per_class.csv`` and ``_confusions.csv`` beside
``probe.json``), and, when asked, few-shot kNN and linear (``shots``/``tries``,
``fewshot.py``), the ``tests`` folders holding a subset of the classes (``subsets.py``) and the
chosen head retrained on all of train (``refit``; then it is the head stored).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdino_cli import checkpoint as ckpt_mod
from fastdino_cli.data.labelled import LabelledFolder, check_same_classes, scan_labelled_folder
from fastdino_cli.devices import resolve_device
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.classifier import make_probe_entry, save_probe_entry
from fastdino_cli.eval.features import (
    FeatureRecipe,
    Features,
    default_recipe,
    extract_features,
    model_hash,
)
from fastdino_cli.eval.probe.fewshot import check_shots, few_shot, grid_steps
from fastdino_cli.eval.probe.head import score_head, train_head
from fastdino_cli.eval.probe.knn import DEFAULT_KS, knn_classify
from fastdino_cli.eval.probe.linear import DEFAULT_LRS, linear_probe
from fastdino_cli.eval.probe.perclass import class_counts, per_class_top1, top_confusions
from fastdino_cli.eval.probe.result import (
    ProbeReport,
    ProbeRow,
    write_detail_csvs,
    write_details,
    write_probe_json,
    write_table_csv,
)
from fastdino_cli.eval.probe.subsets import SubsetResult, relabel, subset_mapping


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
    csv: str | Path | None = None,
    shots: Sequence[int] = (),
    tries: int = 5,
    tests: Sequence[str | Path] = (),
    refit: bool = False,
    top_confusions_n: int = 10,
) -> ProbeReport:
    """``fastdino probe`` as one call: probe every checkpoint, store each chosen head and its
    ``probe.json`` (unless ``write=False``), write the table to ``csv`` if given; one report.

    ``shots``/``tries``: few-shot kNN and linear; ``tests``: labelled folders whose classes are
    a subset of train's; ``refit``: retrain the chosen head on all of train and store that one;
    ``top_confusions_n``: how many confusion pairs each row keeps.
    """
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
    shots = check_shots(shots, tries) if shots else []
    if refit and augment:
        raise ConfigError(
            "--refit retrains the chosen head on cached features; it cannot follow --augment "
            "(drop one of them)"
        )
    if top_confusions_n < 0:
        raise ConfigError(f"--top-confusions {top_confusions_n} must be 0 or more")
    dev = resolve_device(device)
    train_folder = scan_labelled_folder(train, what="train")
    val_folder = scan_labelled_folder(val, what="val")
    check_same_classes(train_folder, val_folder)
    test_folders = []
    for t in tests:
        folder = scan_labelled_folder(t, what="--test", min_classes=1)
        test_folders.append((str(t), folder, *subset_mapping(train_folder.class_names, folder)))
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
        "shots": list(shots),
        "tries": tries if shots else 0,
        "tests": [str(t) for t in tests],
        "refit": refit,
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
                shots=shots, tries=tries, test_folders=test_folders, refit=refit,
                top_confusions_n=top_confusions_n,
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
            write_probe_json(Path(out) if out else Path(path), per_ckpt)
            write_details(Path(out) if out else Path(path), per_ckpt)
        rows.extend(per_ckpt)
        del backbone, models
    report = ProbeReport(rows=rows, settings=settings)
    if csv is not None:
        write_table_csv(report, csv)
        write_detail_csvs(report, csv)
    return report


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
    shots: Sequence[int] = (),
    tries: int = 5,
    test_folders: Sequence[tuple[str, LabelledFolder, torch.Tensor, torch.Tensor]] = (),
    refit: bool = False,
    top_confusions_n: int = 10,
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
    row = ProbeRow(
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
    chosen = score_head(lin.weight, lin.bias, lin.spec, va, device=device)
    row.per_class = _per_class(chosen.predictions, knn, va)
    row.confusions = top_confusions(chosen.predictions, va.labels, va.class_names, top_confusions_n)
    num_classes = len(tr.class_names)
    refit_head = None
    if refit:
        refit_head = train_head(
            tr, lin.spec, num_classes=num_classes, epochs=epochs, batch_size=batch_size,
            seed=seed, device=device,
        )  # fmt: skip
        score = score_head(*refit_head, lin.spec, va, device=device)
        row.refit = {"top1": score.top1, "top5": score.top5, "num_fit": len(tr),
                     "head": lin.spec.label(), "epochs": epochs}  # fmt: skip
        row.refit_head = refit_head
    if shots:
        row.few_shot = few_shot(
            tr, va, shots=shots, tries=tries, ks=ks, head=lin.spec,
            head_steps=grid_steps(lin.num_fit, epochs, batch_size), batch_size=batch_size,
            seed=seed, device=device,
        )  # fmt: skip
    for label, folder, to_train, mask in test_folders:
        te = relabel(
            extract_features(model, folder, recipe, desc=f"--test features {name}", **kw),
            to_train, tr.class_names,
        )  # fmt: skip
        row.subsets.append(_score_subset(label, te, mask, tr, lin, refit_head, ks, device))
    return row


def _per_class(linear_pred: torch.Tensor, knn, va: Features) -> list[dict[str, Any]]:
    """One record per class: its val images, linear and kNN (every k) top-1 (%)."""
    c = len(va.class_names)
    counts = class_counts(va.labels, c).tolist()
    columns = {"linear": per_class_top1(linear_pred, va.labels, c)}
    for r in knn:
        columns[f"knn{r.k}"] = per_class_top1(r.predictions, va.labels, c)
    return [
        {"class": name, "num_val": counts[i], **{k: v[i] for k, v in columns.items()}}
        for i, name in enumerate(va.class_names)
    ]


def _score_subset(label, te: Features, mask, tr: Features, lin, refit_head, ks, device):
    """kNN and the linear head (chosen, and refit if any) on one --test folder."""
    knn = knn_classify(
        tr.last_cls, tr.labels, te.last_cls, te.labels, ks=ks,
        num_classes=len(tr.class_names), device=device, class_mask=mask,
    )  # fmt: skip
    for r in knn:
        r.predictions = None
    restricted = score_head(lin.weight, lin.bias, lin.spec, te, mask, device)
    unrestricted = score_head(lin.weight, lin.bias, lin.spec, te, device=device)
    refit_top1 = None
    if refit_head is not None:
        refit_top1 = score_head(*refit_head, lin.spec, te, mask, device).top1
    return SubsetResult(
        folder=label, num_images=len(te), num_classes=int(mask.sum()), knn=knn,
        linear_top1=restricted.top1, linear_top5=restricted.top5,
        linear_top1_all_classes=unrestricted.top1, refit_top1=refit_top1,
    )  # fmt: skip


def _store_head(
    path: str | Path,
    row: ProbeRow,
    class_names: list[str],
    settings: dict[str, Any],
    out: str | Path | None,
) -> Path:
    lin = row.linear
    weight, bias = row.refit_head if row.refit_head is not None else (lin.weight, lin.bias)
    accuracy: dict[str, Any] = {}
    if row.refit is not None:  # the stored head is the refit one: its val numbers come first
        accuracy = {
            "linear_top1": row.refit["top1"],
            "linear_top5": row.refit["top5"],
            "refit": True,
            "chosen_head_top1": lin.val_top1,
        }
    entry = make_probe_entry(
        weight=weight,
        bias=bias,
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
            **accuracy,
        },
        protocol={**settings, "num_fit": row.refit["num_fit"] if row.refit else lin.num_fit,
                  "num_holdout": lin.num_holdout, "num_val": row.num_val},
    )  # fmt: skip
    return save_probe_entry(path, entry, out)
