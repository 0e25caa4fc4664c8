"""`fastdino curate` on a built pool: dedup precision/recall, retrieval precision, speed, memory,
and what it buys: pretraining on the curated subset vs a random subset of the same size.

Usage:
    python benchmarks/curation.py --work /tmp/curation-bench --steps 200 \\
        --out benchmarks/results/curation_cpu.json
    python benchmarks/curation.py --large 1000000 --dim 384     # search scale only (synthetic)

The pool (``build_pool``): demo-class crops (the demo photographs' train regions, another seed
than the demo data), distractor crops of other scikit-image photographs and generated textures,
and planted near-duplicates (JPEG re-encode, crop, resize, colour shift) of pool images, of query
images (the demo train split) and of evaluation images (the demo val split), with the ground
truth in ``pool_truth.json``. Then:

1. an embedding model: the ``demo`` preset as shipped (500 steps) on the query set (the demo
   train split), as DINOv2 embedded its pool with a model trained on curated data;
2. ``curate`` with the default settings (query = demo train, ``--eval`` = demo val), and a sweep
   of both dedup thresholds over the stored neighbours (precision/recall on the planted pairs);
3. retrieval precision: the fraction of retrieved images that are demo-class crops, and of those
   credited to their own class;
4. the ``demo`` preset pretrained (``--steps`` steps each) on ``curated.txt`` and on a seeded
   random pool subset of the same size, and on the whole pool; kNN top-1 (k=20) on the demo val
   split with the demo train split as the bank (the embedder's own figure for reference);
5. ``--large N``: N synthetic clustered embeddings through the neighbour, dedup and retrieval
   stages in a child process: seconds per stage, the index ``auto`` chose, peak memory (RSS).

Prints one JSON line (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.data import demo as demo_data  # noqa: E402

DISTRACTORS = (
    "cell", "checkerboard", "clock", "coins", "colorwheel", "grass", "gravel", "horse", "logo",
    "microaneurysms", "moon", "page", "shepp_logan_phantom", "text", "binary_blobs",
)  # fmt: skip
TRANSFORMS = ("jpeg", "crop", "resize", "colour")


def _crop_image(img: np.ndarray, split: str, size: int, rng: np.random.Generator) -> np.ndarray:
    region = demo_data._region(img, split)
    crop = demo_data._random_crop(region, min(img.shape[:2]), rng)
    pil = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC)
    return demo_data._photometric(np.asarray(pil), rng)


def _texture(i: int, size: int, rng: np.random.Generator) -> np.ndarray:
    kind = i % 4
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # smooth noise
        small = rng.random((max(2, size // 8), max(2, size // 8), 3))
        return np.asarray(
            Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        )
    if kind == 1:  # stripes
        f, a = rng.uniform(2, 12), rng.uniform(0, np.pi)
        v = 0.5 + 0.5 * np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy))
    elif kind == 2:  # checker
        n = int(rng.integers(2, 9))
        v = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(float)
    else:  # gradient
        v = np.clip(rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + 0.5, 0, 1)
    colour = rng.random(3)
    other = rng.random(3)
    rgb = v[..., None] * colour + (1 - v[..., None]) * other
    return (rgb * 255).astype(np.uint8)


def near_duplicate(img: Image.Image, how: str, rng: np.random.Generator) -> Image.Image:
    """A planted copy: JPEG re-encode, a crop, a resize, or a colour shift."""
    w, h = img.size
    if how == "jpeg":  # the file is written with these bytes (see build_pool)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(30, 71)))
        out = Image.open(io.BytesIO(buf.getvalue()))
        out.info["jpeg_bytes"] = buf.getvalue()
        return out
    if how == "crop":
        f = rng.uniform(0.8, 0.92)
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
    if how == "resize":
        f = rng.uniform(0.5, 0.75)
        return img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BICUBIC)
    arr = np.asarray(img).astype(np.float32)
    arr = arr * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-15, 15)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def build_pool(
    root: Path,
    demo: demo_data.DemoDatasetInfo,
    *,
    size: int = 64,
    in_class: int = 60,
    per_distractor: int = 60,
    textures: int = 300,
    dup_pool: int = 150,
    dup_query: int = 60,
    dup_eval: int = 60,
    seed: int = 1,
) -> dict:
    """Write ``root/img_NNNNN.{png,jpg}`` in a shuffled order; return the ground truth."""
    rng = np.random.default_rng(seed)
    items: list[tuple[Image.Image, dict]] = []
    for ci, (name, func, _) in enumerate(demo_data.SOURCES):
        img = demo_data._load_source(func)
        r = np.random.default_rng([seed, 100 + ci])
        for _ in range(in_class):
            items.append((Image.fromarray(_crop_image(img, "train", size, r)), {"class": name}))
    for di, func in enumerate(DISTRACTORS):
        img = demo_data._load_source(func)
        r = np.random.default_rng([seed, 200 + di])
        for _ in range(per_distractor):
            crop = _crop_image(img, "train", size, r)
            items.append((Image.fromarray(crop), {"class": None, "source": func}))
    for i in range(textures):
        items.append((Image.fromarray(_texture(i, size, rng)), {"class": None, "source": "tex"}))
    originals = list(range(len(items)))
    for j in rng.choice(originals, size=dup_pool, replace=False):
        how = TRANSFORMS[len(items) % 4]
        copy = near_duplicate(items[j][0], how, rng)
        items.append((copy, {**items[j][1], "dup_of": ("pool", int(j)), "how": how}))
    for split, n in (("train", dup_query), ("val", dup_eval)):
        files = sorted((demo.root / split).rglob("*.png"))
        for f in rng.choice(files, size=n, replace=False):
            how = TRANSFORMS[len(items) % 4]
            copy = near_duplicate(Image.open(f).convert("RGB"), how, rng)
            cls = Path(f).parent.name
            ref = "query" if split == "train" else "eval"
            items.append((copy, {"class": cls, "dup_of": (ref, str(f)), "how": how}))
    order = rng.permutation(len(items))
    root.mkdir(parents=True, exist_ok=True)
    names = {}
    for pos, idx in enumerate(order):
        img, meta = items[idx]
        ext = "jpg" if meta.get("how") == "jpeg" else "png"
        names[int(idx)] = root / f"img_{pos:05d}.{ext}"
        if "jpeg_bytes" in img.info:
            names[int(idx)].write_bytes(img.info["jpeg_bytes"])
        else:
            img.save(names[int(idx)])
    truth = {}
    for idx, (_, meta) in enumerate(items):
        entry = {k: v for k, v in meta.items() if k != "dup_of"}
        if "dup_of" in meta:
            kind, ref = meta["dup_of"]
            entry["dup_of"] = [kind, str(names[ref]) if kind == "pool" else ref]
        truth[str(names[idx])] = entry
    (root.parent / "pool_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


# ------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------


def pretrain(data: Path | str, out: Path, steps: int, log) -> Path:
    """The ``demo`` preset for ``steps`` steps (50 per epoch) on ``data``; reused when finished."""
    if (out / "final.pt").is_file():
        return out / "final.pt"
    cmd = [
        sys.executable, "-m", "fastdino_cli", "pretrain", "--preset", "demo",
        f"data.train={data}", f"optim.epochs={steps / 50:g}", "--out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    log(f"pretrained {out.name} on {data} in {time.perf_counter() - t0:.0f} s")
    return out / "final.pt"


def knn_top1(checkpoint: Path, demo: demo_data.DemoDatasetInfo, k: int = 20) -> float:
    """kNN top-1 (%) on the demo val split, the demo train split as the bank (probe's kNN)."""
    from fastdino_cli.checkpoint import load_teacher_backbone
    from fastdino_cli.data.labelled import scan_labelled_folder
    from fastdino_cli.eval.features import default_recipe, extract_features
    from fastdino_cli.eval.probe.knn import knn_classify

    model, ckpt = load_teacher_backbone(checkpoint)
    recipe = default_recipe(ckpt)
    tr = extract_features(model, scan_labelled_folder(demo.train), recipe, use_cache=False)
    va = extract_features(model, scan_labelled_folder(demo.val), recipe, use_cache=False)
    (res,) = knn_classify(tr.last_cls, tr.labels, va.last_cls, va.labels, ks=(k,))
    return round(res.top1, 2)


def dedup_quality(out: Path, truth: dict, dedup_t: float, ref_t: float) -> dict:
    """Precision/recall of the planted pairs at thresholds (dedup_t, ref_t), from stored stages."""
    from fastdino_cli.curate import store
    from fastdino_cli.curate.dedup import components_above, read_neighbours
    from fastdino_cli.curate.store import FeatureBank

    pool = FeatureBank.open(out / "embed" / "pool")
    paths = [str(p) for p in pool.paths(np.arange(len(pool)))]
    row = {p: i for i, p in enumerate(paths)}
    sims, ids = read_neighbours(pool, out / "neighbours")
    within = components_above(sims, ids, dedup_t)
    dd = store.read_npz(out / "dedup" / "dedup.npz")
    pairs = [(row[v["dup_of"][1]], row[p]) for p, v in truth.items() if _dup_kind(v) == "pool"]
    found = sum(within.component[a] == within.component[b] for a, b in pairs)
    planted = {x for pair in pairs for x in pair}
    removed = np.nonzero(~within.keep)[0]
    legit = sum(
        r in planted
        and any(within.component[a] == within.component[b] for a, b in pairs if r in (a, b))
        for r in removed
    )
    hows = [v["how"] for p, v in truth.items() if _dup_kind(v) == "pool"]
    per_how = {
        h: round(float(np.mean([within.component[a] == within.component[b]
                                for (a, b), w in zip(pairs, hows, strict=True) if w == h])), 4)
        for h in TRANSFORMS
    }  # fmt: skip
    out_d = {
        "pool_recall_per_transform": per_how,
        "pool_pairs": len(pairs),
        "pool_recall": round(found / max(1, len(pairs)), 4),
        "pool_removed": int(len(removed)),
        "pool_precision": round(legit / max(1, len(removed)), 4) if len(removed) else None,
    }
    for ref in ("query", "eval"):
        copies = np.array([row[p] for p, v in truth.items() if _dup_kind(v) == ref])
        flagged = np.nonzero(dd[f"{ref}_sim"] >= ref_t)[0]
        hit = np.isin(copies, flagged)
        out_d[f"{ref}_copies"] = int(len(copies))
        out_d[f"{ref}_recall"] = round(float(hit.mean()), 4)
        out_d[f"{ref}_flagged"] = int(len(flagged))
        good = np.isin(flagged, copies).sum()
        out_d[f"{ref}_precision"] = round(float(good / len(flagged)), 4) if len(flagged) else None
    return out_d


def _dup_kind(entry: dict) -> str | None:
    return entry["dup_of"][0] if "dup_of" in entry else None


def retrieval_quality(result, truth: dict) -> dict:
    """Fraction of retrieved images from the query classes, and credited to their own class."""
    paths = Path(result.curated_list).read_text().splitlines()
    sel = np.load(result.out / "retrieve" / "selected.npz")
    from fastdino_cli.curate.store import FeatureBank

    qbank = FeatureBank.open(result.out / "embed" / "query")
    credited = [p.parent.name for p in qbank.paths(sel["query"])]
    classes = [truth[str(Path(p))]["class"] if str(Path(p)) in truth else None for p in paths]
    in_class = [c is not None for c in classes]
    right = [c == q for c, q in zip(classes, credited, strict=True)]
    pool_in_class = sum(v["class"] is not None for v in truth.values()) / len(truth)
    return {
        "retrieved": len(paths),
        "precision_query_classes": round(float(np.mean(in_class)), 4) if paths else None,
        "precision_own_class": round(float(np.mean(right)), 4) if paths else None,
        "pool_fraction_query_classes": round(pool_in_class, 4),
    }


def large_pool(n: int, dim: int, work: Path, shard: int = 65536, seed: int = 0) -> dict:
    """Synthetic clustered unit vectors (1000 modes, 2% planted near-copies) through the search
    stages exactly as ``curate`` runs them; run in a child process for its own peak RSS."""
    import torch

    from fastdino_cli.curate import store
    from fastdino_cli.curate.dedup import components_above, pool_neighbours, read_neighbours
    from fastdino_cli.curate.index import build_searcher, choose_index
    from fastdino_cli.curate.kmeans import POINTS_PER_CENTROID, assign, sample_rows, train_centroids
    from fastdino_cli.curate.retrieve import sample_based
    from fastdino_cli.curate.store import FeatureBank

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rng = np.random.default_rng(seed)
    folder = work / "embed" / "pool"
    if folder.exists():
        shutil.rmtree(work)
    folder.mkdir(parents=True)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    n_shards = -(-n // shard)
    t0 = time.perf_counter()
    for i in range(n_shards):
        m = min(shard, n - i * shard)
        x = centers[rng.integers(0, 1000, m)] + rng.standard_normal((m, dim)).astype(np.float32)
        copies = rng.random(m) < 0.02
        src = rng.integers(0, m, copies.sum())
        x[copies] = x[src] + 0.05 * rng.standard_normal((copies.sum(), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.write_shard(folder, i, x, range(i * shard, i * shard + m), {})
    store.write_lines(folder / store.FILES, [f"synthetic_{j}" for j in range(n)])
    store.write_json(folder / store.DONE, {"info": {"shards": n_shards, "dim": dim}})
    times = {"write_shards_s": round(time.perf_counter() - t0, 1)}
    bank = FeatureBank.open(folder)
    index = choose_index(len(bank), "auto")
    t0 = time.perf_counter()
    pool_neighbours(bank, work / "neighbours", 16, lambda: build_searcher(bank, index=index))
    times["neighbours_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    sims, ids = read_neighbours(bank, work / "neighbours")
    dup = components_above(sims, ids, 0.95)
    times["components_s"] = round(time.perf_counter() - t0, 1)
    keep = dup.keep
    t0 = time.perf_counter()
    k = max(1, round(np.sqrt(keep.sum())))
    sample = sample_rows(np.nonzero(keep)[0], k * POINTS_PER_CENTROID, seed)
    centroids = train_centroids(bank.rows(sample), k, seed=seed)
    assign(bank, centroids, keep)
    times["kmeans_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    queries = bank.rows(rng.choice(len(bank), 1000, replace=False))
    sample_based(queries, build_searcher(bank, keep, index=index), 4, 0.5)
    times["retrieve_1000_queries_s"] = round(time.perf_counter() - t0, 1)
    return {
        "pool": n,
        "dim": dim,
        "index": index,
        "removed_within_pool": int((~keep).sum()),
        "clusters": int(k),
        **times,
        "search_images_per_s": round(n / max(times["neighbours_s"], 1e-9), 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "shards_on_disk_gib": round(n * dim * 4 / 2**30, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastdino-curation-bench"))
    ap.add_argument("--steps", type=int, default=200, help="pretraining steps of each model")
    ap.add_argument("--large", type=int, default=0, help="only the synthetic search-scale run")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--large-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = args.work.resolve()

    def log(msg: str) -> None:
        print(f"[curation bench] {msg}", file=sys.stderr, flush=True)

    if args.large_child:
        print(json.dumps(large_pool(args.large, args.dim, work / "large")))
        return
    if args.large:
        cmd = [sys.executable, __file__, "--work", str(work), "--large", str(args.large)]
        child = subprocess.run(
            [*cmd, "--dim", str(args.dim), "--large-child"], check=True, capture_output=True
        )
        result = {"benchmark": "curation_large", **json.loads(child.stdout), **machine()}
        emit(result, args.out)
        return

    from fastdino_cli.curate.run import curate
    from fastdino_cli.curate.settings import CurateSettings

    demo = demo_data.build_demo_dataset(work / "demo", size=64)
    if not (work / "pool_truth.json").is_file():
        build_pool(work / "pool", demo)
    truth = json.loads((work / "pool_truth.json").read_text())
    log(f"pool: {len(truth)} images")
    # the embedding model: the demo preset as shipped (500 steps) on the query set, as DINOv2
    # embedded its pool with a model trained on curated data
    embedder = pretrain(demo.train, work / "runs" / "query", 500, log)

    settings = CurateSettings()
    out = work / "curation"
    if out.exists():  # embed from scratch: the embedding speed is measured on this first call
        shutil.rmtree(out)
    t0 = time.perf_counter()
    result = curate(
        work / "pool", demo.train, embedder, out, eval_dirs=[demo.val], settings=settings,
        device="cpu", log=log,
    )  # fmt: skip
    first_s = time.perf_counter() - t0
    summary = result.summary
    sweep = []
    for t in (0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99):
        sweep.append({"threshold": t, **dedup_quality(out, truth, t, t)})
    floors = []
    for floor in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8):
        for method in ("sample", "cluster", "both"):
            s = CurateSettings(min_similarity=floor, method=method, figures=False)
            r = curate(work / "pool", demo.train, embedder, out, eval_dirs=[demo.val], settings=s)
            floors.append(
                {"min_similarity": floor, "method": method, **retrieval_quality(r, truth)}
            )
    # back to the defaults: the list the comparison trains on, and the figures
    result = curate(
        work / "pool", demo.train, embedder, out, eval_dirs=[demo.val], settings=settings
    )
    curated = work / "curated.txt"  # the list the curated model trains on, kept outside `out`
    if not curated.is_file():
        shutil.copy(result.curated_list, curated)
    same_list = curated.read_text() == Path(result.curated_list).read_text()
    n = len(curated.read_text().splitlines())
    pool_files = sorted(str(p) for p in (work / "pool").iterdir())
    rng = np.random.default_rng(0)
    random_list = work / "random.txt"
    random_list.write_text("\n".join(rng.choice(pool_files, size=n, replace=False)) + "\n")
    models = {
        "curated": pretrain(curated, work / "runs" / "curated", args.steps, log),
        "random": pretrain(random_list, work / "runs" / "random", args.steps, log),
        "whole_pool": pretrain(work / "pool", work / "runs" / "pool", args.steps, log),
        "embedder_query_set_500_steps": embedder,
    }
    knn = {name: knn_top1(ckpt, demo) for name, ckpt in models.items()}
    random_truth = [truth[p]["class"] is not None for p in random_list.read_text().split()]
    record = {
        "benchmark": "curation",
        "pool_images": len(truth),
        "steps": args.steps,
        "preset": "demo",
        "summary": {k: summary[k] for k in ("pool", "duplicates", "kept_after_dedup", "clusters")},
        "retrieved_per_class": summary["retrieved"]["per_class"],
        "defaults": {
            "dedup_threshold": settings.dedup_threshold,
            "ref_threshold": settings.ref_threshold,
            "min_similarity": settings.min_similarity,
            "method": settings.method,
            "k": settings.k,
        },
        "dedup_at_defaults": dedup_quality(
            out, truth, settings.dedup_threshold, settings.ref_threshold
        ),
        "dedup_sweep": sweep,
        "retrieval_at_defaults": retrieval_quality(result, truth),
        "retrieval_sweep": floors,
        "random_subset_fraction_query_classes": round(float(np.mean(random_truth)), 4),
        "subset_size": n,
        "curated_list_reproduced": same_list,
        "knn_top1_k20_demo_val": knn,
        "embed_images_per_s": summary["images_per_s"]["embed"],
        "search_images_per_s": summary["images_per_s"]["search"],
        "first_curate_s": round(first_s, 1),
        "index": summary["index"],
        "figures": summary["outputs"].get("figures"),
        **machine(),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
