"""The training DataLoader: step-keyed batches of multi-crop samples with their iBOT masks.

The sampler hands ``(index, step)`` keys to the dataset, so each sample is built for the
curriculum stage of its step inside the workers, and a resumed run continues the same order
(``data/multicrop.py``); the collate function draws the masks for the batch's step
(``data/masking.py``). Shared by ``pretrain`` and ``benchmarks/curriculum_speed.py``.
"""

from __future__ import annotations

import signal

import torch
from torch.utils.data import DataLoader

from fastdino_cli.data.masking import MultiCropCollate
from fastdino_cli.data.multicrop import MultiCropDataset, StepBatchSampler, seed_for


def _ignore_sigterm(_worker_id: int) -> None:
    """Data-loader workers leave SIGTERM to the main process, which checkpoints and stops them.

    Schedulers (Slurm, Kubernetes) signal every process of a job; a worker dying of it would
    crash the main process before it can write its checkpoint.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_loader(cfg, files, total, start, stop, rank, world, device) -> DataLoader:
    """The training DataLoader for steps ``start .. stop - 1`` of this rank: multi-crop dataset,
    step-keyed sampler, mask-drawing collate, ``data.*`` workers / prefetch / pinned memory."""
    dataset = MultiCropDataset(
        files,
        cfg.crops,
        cfg.curriculum,
        total_steps=total,
        seed=cfg.train.seed,
        fast_decode=cfg.data.fast_decode,
    )
    sampler = StepBatchSampler(
        len(files),
        cfg.train.batch_size_per_gpu,
        seed=cfg.train.seed,
        start_step=start,
        end_step=stop,
        rank=rank,
        world_size=world,
    )
    collate = MultiCropCollate(
        patch_size=cfg.model.patch_size,
        mask_probability=cfg.ibot.mask_sample_probability,
        ratio_min_max=cfg.ibot.mask_ratio_min_max,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world,
        mean=cfg.crops.mean,
        std=cfg.crops.std,
    )
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=cfg.data.pin_memory and device.type == "cuda",
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_ignore_sigterm if workers > 0 else None,
        # its own generator: creating the iterator must not consume the global RNG, or a
        # resumed run's drop-path draws would shift by one
        generator=torch.Generator().manual_seed(seed_for(cfg.train.seed, start, 2)),
    )
