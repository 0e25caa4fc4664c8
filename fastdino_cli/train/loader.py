"""The training DataLoader: step-keyed batches of multi-crop samples with their iBOT masks.

The sampler hands ``(index, step)`` keys to the dataset, so each sample is built for the
curriculum stage of its step inside the workers, and a resumed run continues the same order
(``data/multicrop.py``); the collate function draws the masks for the batch's step
(``data/masking.py``). Assembled from a run's config by ``train/build.py`` for the loop and
``benchmarks/curriculum_speed.py``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fastdino_cli.config import CropsConfig, CurriculumConfig, DataConfig, IbotConfig
from fastdino_cli.data.masking import MultiCropCollate
from fastdino_cli.data.multicrop import MultiCropDataset, StepBatchSampler
from fastdino_cli.seeding import LOADER_STREAM, seed_for


@dataclass(frozen=True)
class StepRange:
    """The iterations one rank loads: ``start .. stop - 1`` of a run of ``total`` iterations."""

    start: int
    stop: int
    total: int
    rank: int = 0
    world_size: int = 1


AUTO_WORKERS_CAP = 16
"""``data.num_workers: auto`` never starts more workers than this per process: one worker
builds ~110 (stage 1) / ~45 (stage 2) ViT-S/16 training images per second
(``benchmarks/results/data_pipeline_cpu.json``), so a fast GPU wants every core it can get, but
each worker also holds ``data.prefetch_factor`` batches in memory."""


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, reduced to the cgroup's CPU quota
    when a container sets one (``cpu.max``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def resolve_num_workers(
    value: int | str, *, cores: int | None = None, local_processes: int | None = None
) -> int:
    """``data.num_workers`` as a number. ``auto``: the cores of this machine shared by the
    training processes on it (``LOCAL_WORLD_SIZE``), less one per process for the training
    process itself, capped at ``AUTO_WORKERS_CAP``; 0 (load in the training process) when a
    process has a single core."""
    if value != "auto":
        return int(value)
    cores = available_cores() if cores is None else cores
    if local_processes is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    per_process = cores // max(1, local_processes)
    return 0 if per_process <= 1 else min(AUTO_WORKERS_CAP, per_process - 1)


def _leave_stop_signals_to_the_main_process(_worker_id: int) -> None:
    """Data-loader workers ignore SIGTERM and SIGINT: the main process checkpoints and stops
    them.

    Schedulers (Slurm, Kubernetes) signal every process of a job, and Ctrl-C signals every
    process of the terminal's foreground group; a worker dying of it would crash the main
    process before it can write its checkpoint.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_loader(
    files: Sequence[Path],
    *,
    steps: StepRange,
    batch_size: int,
    seed: int,
    data: DataConfig,
    crops: CropsConfig,
    curriculum: CurriculumConfig,
    ibot: IbotConfig,
    patch_size: int,
    device: torch.device,
) -> DataLoader:
    """The training DataLoader for ``steps`` of one rank: multi-crop dataset (``crops``, the
    stages of ``curriculum``), step-keyed sampler (``batch_size`` images per step and rank),
    mask-drawing collate (``ibot``, ``patch_size``), ``data.*`` workers / prefetch / pinned
    memory; every draw keyed by ``seed``."""
    dataset = MultiCropDataset(
        list(files),
        crops,
        curriculum,
        total_steps=steps.total,
        seed=seed,
        fast_decode=data.fast_decode,
    )
    sampler = StepBatchSampler(
        len(files),
        batch_size,
        seed=seed,
        start_step=steps.start,
        end_step=steps.stop,
        rank=steps.rank,
        world_size=steps.world_size,
    )
    collate = MultiCropCollate(
        patch_size=patch_size,
        mask_probability=ibot.mask_sample_probability,
        ratio_min_max=ibot.mask_ratio_min_max,
        seed=seed,
        rank=steps.rank,
        world_size=steps.world_size,
        mean=crops.mean,
        std=crops.std,
    )
    workers = resolve_num_workers(data.num_workers)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=data.pin_memory and device.type == "cuda",
        prefetch_factor=data.prefetch_factor if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_leave_stop_signals_to_the_main_process if workers > 0 else None,
        # its own generator: creating the iterator must not consume the global RNG, or a
        # resumed run's drop-path draws would shift by one
        generator=torch.Generator().manual_seed(seed_for(seed, steps.start, LOADER_STREAM)),
    )
