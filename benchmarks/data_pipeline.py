"""Images/s of ONE data-loader worker for the curriculum stages: baseline vs fast pipeline.

Generates ~500x375 JPEGs (ImageNet's typical size) from scikit-image photographs (random 4:3
crops, flips, quality 90), then builds full multi-crop samples with ``MultiCropDataset`` exactly
as a loader worker does (one intra-op thread), for stage 1 of the preset (112/48 for the
FastDINOv2 presets) and its last stage (224/96 with noise patching), in four configurations:

    baseline  full-scale decode, torchvision tensor photometric ops, normalised float32 crops
              (the pipeline before #11)
    exact     full-scale decode (``data.fast_decode=false``), OpenCV photometric ops, uint8 crops
    fast_f32  reduced-scale JPEG decode, OpenCV photometric ops, normalised float32 crops built
              in the worker (the pipeline before crops stayed 8-bit until the device)
    fast      reduced-scale JPEG decode (``data/jpeg_scale.py``), OpenCV photometric ops, uint8
              crops (the default: normalised on the training device)

``stage1_sample_bytes`` is what one stage-1 sample hands on to the collate function, the
worker-to-main-process queue, pinning and the copy to the GPU (4x less as uint8).

All configurations run interleaved image by image (each builds the same sample in turn), so a
busy or throttled machine slows them alike; the median of the rounds is reported, in images per
CPU-second of the worker thread (robust to other load) and per wall-clock second. Prints one
JSON line.

    python benchmarks/data_pipeline.py [--preset vits16-in100] [--images 48] [--rounds 5]
        [--out benchmarks/results/data_pipeline_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.config import resolve_config  # noqa: E402
from fastdino_cli.data import multicrop  # noqa: E402
from fastdino_cli.data.jpeg_scale import reduction  # noqa: E402
from fastdino_cli.data.multicrop import MultiCropDataset  # noqa: E402
from fastdino_cli.data.photometric import apply_photometric_hwc, augment_crop  # noqa: E402
from tests.photometric_reference import apply_photometric_torchvision  # noqa: E402


def torchvision_augment(crop, params, cfg):
    """The pre-#11 path: float tensor in [0, 1], torchvision photometric ops, normalise."""
    x = crop.float() / 255.0
    if params is not None:
        x = apply_photometric_torchvision(x, params, cfg)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std


def float_output_augment(crop, params, cfg):
    """OpenCV photometric ops, then normalised float32 crops built in the worker (the pipeline
    before crops stayed 8-bit until the device)."""
    x = crop.permute(1, 2, 0).numpy().astype(np.float32) * np.float32(1.0 / 255.0)
    if params is not None:
        x = apply_photometric_hwc(np.ascontiguousarray(x), params, cfg)
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


CONFIGS = {  # name -> (fast_decode, augment function)
    "baseline": (False, torchvision_augment),
    "exact": (False, augment_crop),
    "fast_f32": (True, float_output_augment),
    "fast": (True, augment_crop),
}

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def make_jpegs(root: Path, n: int, size=(500, 375), quality: int = 90, seed: int = 0) -> list:
    """``n`` distinct ``size`` JPEGs: random 4:3 crops (>= half the side) of the photographs."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, p)()).convert("RGB") for p in PHOTOS]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        w = int(rng.uniform(0.5, 1.0) * min(img.width, img.height * 4 / 3))
        h = int(w * 3 / 4)
        x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
        crop = img.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = root / f"img_{i:04d}.jpg"
        crop.save(path, quality=quality)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vits16-in100")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)  # what one loader worker gets
    cfg = resolve_config(args.preset, None, [])
    total = 1000
    last_step = total - 1
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp), args.images)
        datasets = {
            name: MultiCropDataset(
                files, cfg.crops, cfg.curriculum, total_steps=total, seed=0, fast_decode=fast
            )
            for name, (fast, _) in CONFIGS.items()
        }
        stages = {"stage1": 0, "stage2": last_step}
        sample_bytes = {}
        for name, ds in datasets.items():  # what one sample hands to collate, IPC and pinning
            multicrop.augment_crop = CONFIGS[name][1]
            crops = ds[(0, 0)]
            sample_bytes[name] = sum(
                c.numel() * c.element_size() for c in crops.global_crops + crops.local_crops
            )
        cpu = {(s, c): [] for s in stages for c in CONFIGS}
        wall = {(s, c): [] for s in stages for c in CONFIGS}
        for r in range(args.rounds + 1):  # round 0 warms up (page cache, allocator, imports)
            for stage, step in stages.items():
                spent = {name: [0.0, 0.0] for name in datasets}  # cpu, wall seconds
                for i in range(len(files)):  # every config on image i in turn: paired timings
                    for name, ds in datasets.items():
                        multicrop.augment_crop = CONFIGS[name][1]
                        t0, c0 = time.perf_counter(), time.thread_time()
                        ds[(i, step)]
                        c1, t1 = time.thread_time(), time.perf_counter()
                        spent[name][0] += c1 - c0
                        spent[name][1] += t1 - t0
                if r > 0:
                    for name, (c, w) in spent.items():
                        cpu[(stage, name)].append(len(files) / c)
                        wall[(stage, name)].append(len(files) / w)
        multicrop.augment_crop = augment_crop
        sizes = {}
        for stage in stages:
            k = 0 if stage == "stage1" else -1
            st, spec = datasets["fast"].transforms[k], datasets["fast"].decode_specs[k]
            sizes[stage] = {
                "global_crops_size": st.global_size,
                "local_crops_size": st.local_size,
                "local_crops_number": cfg.crops.local_crops_number,
                "noise_patching": st.noise.enabled,
                "jpeg_reduction_500x375": reduction(375, 500, spec),
            }
    result = {
        "benchmark": "data_pipeline",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": {
            **machine(),
            "pillow": PIL.__version__,
            "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        },
        "preset": args.preset,
        "images": args.images,
        "image_size": [500, 375],
        "jpeg_quality": 90,
        "rounds": args.rounds,
        "threads_per_worker": 1,
        "stage1_sample_bytes": sample_bytes,
        "stages": {},
    }
    for stage in stages:
        row = dict(sizes[stage])
        for name in CONFIGS:
            row[f"{name}_images_per_cpu_s"] = round(statistics.median(cpu[(stage, name)]), 2)
            row[f"{name}_images_per_wall_s"] = round(statistics.median(wall[(stage, name)]), 2)
        base, exact = row["baseline_images_per_cpu_s"], row["exact_images_per_cpu_s"]
        row["speedup_fast_vs_baseline"] = round(row["fast_images_per_cpu_s"] / base, 3)
        row["speedup_fast_vs_exact_decode"] = round(row["fast_images_per_cpu_s"] / exact, 3)
        row["speedup_uint8_vs_float_output"] = round(
            row["fast_images_per_cpu_s"] / row["fast_f32_images_per_cpu_s"], 3
        )
        row["speedup_exact_vs_baseline"] = round(exact / base, 3)
        row["speedup_fast_vs_baseline_wall"] = round(
            row["fast_images_per_wall_s"] / row["baseline_images_per_wall_s"], 3
        )
        result["stages"][stage] = row
    result["target_stage1_2x_vs_baseline_met"] = (
        result["stages"]["stage1"]["speedup_fast_vs_baseline"] >= 2.0
    )
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
