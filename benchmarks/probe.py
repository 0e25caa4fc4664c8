"""Probe speed: feature extraction (images/s) and linear-grid training on cached features.

Prints ONE JSON line with the hardware, the date, the settings and two measurements:

- ``extract``: ``eval.features.extract_features`` on a folder of generated PNG images (decode,
  eval transform, backbone under autocast on CUDA), cache off, after one warm-up batch;
- ``linear_grid``: ``eval.linear.train_linear_grid`` on random features of the shape the
  extractor caches (N, n_blocks, D) + (N, D), all recipes x 13 learning rates, ``--epochs``.

    python benchmarks/probe.py --arch vit_small --img-size 224 --images 512 --train-features 50000
    python benchmarks/probe.py --save   # also append the line to benchmarks/results/probe.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine  # noqa: E402
from fastdino_cli.config import ModelConfig  # noqa: E402
from fastdino_cli.data.labelled import scan_labelled_folder  # noqa: E402
from fastdino_cli.eval.features import FeatureRecipe, Features, extract_features  # noqa: E402
from fastdino_cli.eval.probe.linear import DEFAULT_LRS, train_linear_grid  # noqa: E402
from fastdino_cli.model.vit import build_vit  # noqa: E402


def _write_images(root: Path, n: int, size: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.png", compress_level=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--images", type=int, default=256, help="images to extract features from")
    p.add_argument("--batch-size", type=int, default=64, help="extraction batch")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--n-blocks", type=int, default=4)
    p.add_argument("--train-features", type=int, default=10000, help="N for the linear grid")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--linear-batch", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--save", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(0)
    cfg = ModelConfig(arch=args.arch, patch_size=args.patch_size, img_size=args.img_size)
    model = build_vit(cfg).to(device).eval()
    recipe = FeatureRecipe(resize_size=round(args.img_size * 256 / 224), crop_size=args.img_size)

    with tempfile.TemporaryDirectory() as tmp:
        size = round(args.img_size * 1.25)  # decode + resize + crop, as on real photographs
        _write_images(Path(tmp), args.images, size, min(args.classes, args.images))
        folder = scan_labelled_folder(tmp)
        warm = scan_labelled_folder(tmp)
        warm.paths, warm.labels = warm.paths[: args.batch_size], warm.labels[: args.batch_size]
        kw = dict(n_blocks=args.n_blocks, batch_size=args.batch_size, device=device,
                  num_workers=args.workers, use_cache=False)  # fmt: skip
        extract_features(model, warm, recipe, **kw)
        _sync(device)
        t0 = time.perf_counter()
        feats = extract_features(model, folder, recipe, **kw)
        _sync(device)
        extract_s = time.perf_counter() - t0

    n, d = args.train_features, feats.cls.shape[-1]
    g = torch.Generator().manual_seed(0)
    store = torch.float16 if device.type == "cuda" else torch.float32
    synth = Features(
        cls=torch.randn(n, feats.cls.shape[1], d, generator=g).to(store),
        patch_mean=torch.randn(n, d, generator=g).to(store),
        labels=torch.randint(0, args.classes, (n,), generator=g),
        class_names=[str(i) for i in range(args.classes)],
    )
    blocks = sorted({1, feats.cls.shape[1]})
    recipes = [(b, a) for b in blocks for a in (False, True)]
    _sync(device)
    t0 = time.perf_counter()
    train_linear_grid(
        synth, num_classes=args.classes, recipes=recipes, lrs=DEFAULT_LRS, epochs=args.epochs,
        batch_size=args.linear_batch, device=device,
    )  # fmt: skip
    _sync(device)
    linear_s = time.perf_counter() - t0
    record = {
        "benchmark": "probe",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": machine(device),
        "settings": vars(args) | {"embed_dim": d, "heads": len(recipes) * len(DEFAULT_LRS)},
        "extract": {
            "images": args.images,
            "seconds": round(extract_s, 3),
            "images_per_s": round(args.images / extract_s, 1),
        },
        "linear_grid": {
            "features": n,
            "epochs": args.epochs,
            "seconds": round(linear_s, 3),
            "feature_epochs_per_s": round(n * args.epochs / linear_s, 1),
        },
    }
    line = json.dumps(record)
    print(line)
    if args.save:
        out = Path(__file__).parent / "results" / "probe.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
