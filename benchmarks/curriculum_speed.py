"""Wall-clock check of the FastDINOv2 curriculum: one training step of each stage, side by side.

Why: ``fastdino pretrain --plan`` predicts from FLOPs how much cheaper the low-resolution stage is;
this script measures what the hardware actually delivers, in one process, for the same preset:

- **step only** (data loading excluded): a synthetic in-memory batch of the stage's shapes
  (random uint8 crops, iBOT masks from the real collate function), timed over the full
  training step: forward of teacher and student, losses, backward, per-module clipping, AdamW,
  EMA update of the teacher. It is the loop's own stack (``train.build.build_training``: the
  model, optimizer, schedules and ``TrainStep`` the loop trains with); a step ends when its
  scalars have reached the host.
- **with the loader** (data loading included): the loop's own DataLoader
  (``train.build.build_train_loader``: workers, prefetch and pinned memory from ``data.*``) over
  generated JPEG and PNG files (or ``--images DIR``), timed from asking for the batch to the
  end of the step.

It prints ONE JSON line: per stage the median seconds per step (and the loader wait), the
step-time ratio of the last stage over the first next to the FLOPs ratio of the plan (synthetic
and end to end, with ``wall_over_flops_ratio`` and whether it is within 15% of the FLOPs ratio,
issue #11's target), the achieved GFLOP/s, and the hardware, software and date. The step uses
the loop's step options: autocast per ``train.precision`` on CUDA (bf16), fused AdamW on CUDA,
``model.compile`` and ``model.activation_checkpointing``. Example::

    python benchmarks/curriculum_speed.py --preset demo
    python benchmarks/curriculum_speed.py --preset vits16-in100 train.global_batch=4 \\
        --steps 3 --out benchmarks/results/curriculum_speed_cpu_vits16.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.config import Config, resolve_config  # noqa: E402
from fastdino_cli.curriculum import resolve_stages, stage_starts  # noqa: E402
from fastdino_cli.data.images import scan_images  # noqa: E402
from fastdino_cli.data.masking import CropSample, MultiCropCollate  # noqa: E402
from fastdino_cli.train.build import build_train_loader, build_training  # noqa: E402
from fastdino_cli.train.loader import StepRange  # noqa: E402
from fastdino_cli.train.plan import plan_config  # noqa: E402


def write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` smooth random RGB images (half JPEG quality 90, half PNG) of ``size`` (w, h)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        noise = rng.normal(0, 12, (size[1], size[0], 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        if i % 2 == 0:
            path = folder / f"img_{i:04d}.jpg"
            Image.fromarray(arr).save(path, quality=90)
        else:
            path = folder / f"img_{i:04d}.png"
            Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


class Trainer:
    """The training stack of ``cfg`` as the loop builds it (``train.build.build_training``:
    model, step options, optimizer, schedules and the loop's own ``TrainStep``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stack = build_training(cfg)
        self.accelerator = self.stack.accelerator
        self.device = self.accelerator.device
        self.train_step = self.stack.step

    @property
    def precision(self) -> str:
        return self.stack.precision.name

    def step(self, batch) -> float:
        """One whole step; returns when the device has finished it (its scalars are read)."""
        return self.train_step(batch).resolve()["loss"]


def synthetic_batch(cfg: Config, step: int, global_size: int, local_size: int):
    """A batch of the stage's shapes built in memory (no decoding, no augmentation): random
    uint8 crops, pinned on CUDA, as the loader delivers them."""
    g = torch.Generator().manual_seed(step)

    def crop(size: int) -> torch.Tensor:
        return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)

    samples = [
        CropSample(
            [crop(global_size) for _ in range(2)],
            [crop(local_size) for _ in range(cfg.crops.local_crops_number)],
            step,
            0,
            -1.0,
        )
        for _ in range(cfg.batch(1).per_device)
    ]
    batch = MultiCropCollate(
        patch_size=cfg.model.patch_size,
        mask_probability=cfg.ibot.mask_sample_probability,
        ratio_min_max=cfg.ibot.mask_ratio_min_max,
        seed=cfg.train.seed,
        mean=cfg.crops.mean,
        std=cfg.crops.std,
    )(samples)
    return batch.pin_memory() if torch.cuda.is_available() else batch


def time_stages(trainer: Trainer, stages, starts, files, warmup: int, steps: int):
    """Per stage: step times on a synthetic batch, and (load + step) times and load waits with
    the real loader. Stages are interleaved step by step, so a change of machine load during
    the run affects all stages alike."""
    cfg = trainer.cfg
    batches = [
        synthetic_batch(cfg, start, st.global_crops_size, st.local_crops_size)
        for st, start in zip(stages, starts, strict=True)
    ]
    total, device = cfg.total_iterations, trainer.device
    iters = [
        iter(
            build_train_loader(cfg, files, StepRange(start, start + warmup + steps, total), device)
        )
        for start in starts
    ]
    syn = [[] for _ in stages]
    tot = [[] for _ in stages]
    wait = [[] for _ in stages]
    for i in range(warmup + steps):
        for k in range(len(stages)):
            t0 = time.perf_counter()
            trainer.step(batches[k])
            t1 = time.perf_counter()
            batch = next(iters[k])
            t2 = time.perf_counter()
            trainer.step(batch)
            t3 = time.perf_counter()
            if i >= warmup:
                syn[k].append(t1 - t0)
                tot[k].append(t3 - t1)
                wait[k].append(t2 - t1)
    return syn, tot, wait


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per stage and mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    ap.add_argument("--images", type=Path, help="image folder (default: generate JPEG/PNG)")
    ap.add_argument("--n-images", type=int, default=64)
    ap.add_argument("--image-size", type=int, nargs=2, default=(320, 256), metavar=("W", "H"))
    ap.add_argument("--workers", type=int, help="loader workers (default: data.num_workers)")
    ap.add_argument("--label", default="", help="free text stored in the JSON")
    ap.add_argument("--out", type=Path, help="also write the JSON line to this file")
    args = ap.parse_args(argv)

    workers = [] if args.workers is None else [f"data.num_workers={args.workers}"]
    cfg = resolve_config(args.preset, overrides=[*args.overrides, *workers])
    plan = plan_config(cfg)
    stages = resolve_stages(cfg.curriculum, cfg.crops)
    starts = stage_starts(cfg.curriculum, cfg.total_iterations)
    trainer = Trainer(cfg)
    device = trainer.device
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            files = scan_images(args.images)
        else:
            files = write_images(Path(tmp), args.n_images, tuple(args.image_size))
        syn_all, tot_all, wait_all = time_stages(
            trainer, stages, starts, files, args.warmup, args.steps
        )
        rows = []
        for k, (st, start, sp) in enumerate(zip(stages, starts, plan.stages, strict=True)):
            syn, tot, wait = syn_all[k], tot_all[k], wait_all[k]
            step_s = statistics.median(syn)
            rows.append(
                {
                    "stage": st.name,
                    "first_step": start,
                    "global_crops_size": st.global_crops_size,
                    "local_crops_size": st.local_crops_size,
                    "gflops_per_image": round(sp.gflops_per_image, 4),
                    "step_s_synthetic": round(step_s, 4),
                    "step_s_with_loader": round(statistics.median(tot), 4),
                    "loader_wait_s": round(statistics.median(wait), 4),
                    "achieved_gflops_per_s": round(
                        sp.gflops_per_image * cfg.batch(1).per_device / step_s, 2
                    ),
                }
            )
    first, last = rows[0], rows[-1]
    result = {
        "benchmark": "curriculum_speed",
        "label": args.label,
        "preset": args.preset,
        "overrides": args.overrides,
        "arch": f"{cfg.model.arch}/{cfg.model.patch_size}",
        "batch_size": cfg.batch(1).per_device,
        "local_crops_number": cfg.crops.local_crops_number,
        "loader_workers": cfg.data.num_workers,
        "images": f"{len(files)} files" + ("" if args.images else f" generated {args.image_size}"),
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "stages": rows,
        "flops_ratio": round(last["gflops_per_image"] / first["gflops_per_image"], 4),
        "step_time_ratio_synthetic": round(last["step_s_synthetic"] / first["step_s_synthetic"], 4),
        "step_time_ratio_with_loader": round(
            last["step_s_with_loader"] / first["step_s_with_loader"], 4
        ),
        # end to end (loader included): the last stage's wall-clock per image over the first's,
        # as a fraction of the FLOPs ratio (1.0: the curriculum saves all the time FLOPs say)
        "wall_clock_ratio_end_to_end": round(
            last["step_s_with_loader"] / first["step_s_with_loader"], 4
        ),
        "wall_over_flops_ratio": round(
            (last["step_s_with_loader"] / first["step_s_with_loader"])
            / (last["gflops_per_image"] / first["gflops_per_image"]),
            4,
        ),
        "target_within_15pct_of_flops_ratio": bool(
            (last["step_s_with_loader"] / first["step_s_with_loader"])
            >= 0.85 * (last["gflops_per_image"] / first["gflops_per_image"])
        ),
        "precision": trainer.precision,
        "compile": cfg.model.compile,
        "activation_checkpointing": cfg.model.activation_checkpointing,
        "hardware": machine(device),
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
