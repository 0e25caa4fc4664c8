"""Fourier heatmap throughput: perturbed images (bases x images) per second, and what it means.

Measures ``compute_fourier_heatmap`` end to end (basis construction, signs, perturbation,
clamping, the probe classifier's forward pass) for a model and image size, next to the bare
forward throughput at the same batch size, then projects the time of the paper's setting:
ImageNet-100 val, 5 images per class (500 images), 224 px, full plane (25,090 bases) and the
63x63 low-frequency window (1,985 bases). Prints one JSON line.

    python benchmarks/fourier.py --preset vits16-in100-dinov2 --size 224 --images 32 --bases 5
    python benchmarks/fourier.py --checkpoint runs/x/final.pt --device cuda --bf16
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.config import resolve_config  # noqa: E402
from fastdino_cli.eval.classifier import ProbeClassifier, load_probe_classifier  # noqa: E402
from fastdino_cli.eval.features import FeatureRecipe  # noqa: E402
from fastdino_cli.eval.fourier.basis import compute_fourier_heatmap, half_plane_frequencies  # noqa: E402
from fastdino_cli.model.vit import build_vit  # noqa: E402

PAPER_IMAGES = 500  # ImageNet-100 val, 5 per class
PAPER_SIZE = 224


def _classifier(args: argparse.Namespace, size: int) -> tuple[ProbeClassifier, str]:
    if args.checkpoint:
        return load_probe_classifier(args.checkpoint), str(args.checkpoint)
    cfg = resolve_config(args.preset).model
    torch.manual_seed(0)
    backbone = build_vit(cfg)
    head = torch.nn.Linear(backbone.embed_dim, args.classes)
    recipe = FeatureRecipe(resize_size=round(size * 256 / 224), crop_size=size)
    names = [f"c{i}" for i in range(args.classes)]
    clf = ProbeClassifier(
        backbone, head, n_last_blocks=1, avgpool=False, recipe=recipe, class_names=names
    )
    return clf, f"random-init {cfg.arch}/{cfg.patch_size} from preset {args.preset}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vits16-in100-dinov2", help="model of a preset (random)")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint with a probe head instead")
    p.add_argument("--size", type=int, default=PAPER_SIZE)
    p.add_argument("--images", type=int, default=32, help="evaluation images in the run")
    p.add_argument("--bases", type=int, default=5, help="at least this many bases (centred)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    args = p.parse_args()

    device = torch.device(args.device)
    clf, model_desc = _classifier(args, args.size)
    clf = clf.to(device)
    ctx = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if args.bf16
        else contextlib.nullcontext
    )

    def classify(x: torch.Tensor) -> torch.Tensor:
        with ctx():
            return clf.forward_pixels(x).float()

    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.images,), generator=g).to(device)
    window = 2 * math.ceil(math.sqrt(max(2 * args.bases - 1, 1)) / 2) - 1  # smallest odd K
    while (window * window + 1) // 2 < args.bases:
        window += 2
    n_bases = len(half_plane_frequencies(args.size, window))

    with torch.inference_mode():  # warm-up and bare forward throughput at the same batch size
        batch = images[:1].expand(args.batch_size, -1, -1, -1).contiguous()
        classify(batch)
        _sync(device)
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            classify(batch)
        _sync(device)
        forward_ips = reps * args.batch_size / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    compute_fourier_heatmap(
        classify, images, labels, window=window, batch_size=args.batch_size, seed=0
    )
    _sync(device)
    seconds = time.perf_counter() - t0
    passes = n_bases * args.images + args.images  # + the clean pass
    ips = passes / seconds

    def hours(n_bases_paper: int) -> float:
        return round(n_bases_paper * PAPER_IMAGES / ips / 3600, 3)

    full, win63 = len(half_plane_frequencies(PAPER_SIZE)), len(half_plane_frequencies(224, 63))
    record = {
        "benchmark": "fourier",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": machine(device),
        "bf16": args.bf16,
        "model": model_desc,
        "size": args.size,
        "batch_size": args.batch_size,
        "images": args.images,
        "bases": n_bases,
        "seconds": round(seconds, 3),
        "perturbed_images_per_s": round(ips, 2),
        "forward_only_images_per_s": round(forward_ips, 2),
        "overhead_vs_forward": round(forward_ips / ips - 1, 3),
        "paper_setting": {
            "images": PAPER_IMAGES,
            "size": PAPER_SIZE,
            "bases_full_plane": full,
            "bases_window_63": win63,
            "projected_hours_full_plane": hours(full),
            "projected_hours_window_63": hours(win63),
            "valid": args.size == PAPER_SIZE,
            "note": "projection = bases x 500 images / measured throughput at this size",
        },
    }
    emit(record)


if __name__ == "__main__":
    main()
