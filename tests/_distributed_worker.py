"""Run by ``tests/test_distributed.py`` under ``torchrun``: several ``pretrain`` calls in a row.

Usage: ``torchrun --nproc_per_node 2 tests/_distributed_worker.py JOBS.json``. Each job is
``{"overrides": [...], "force_config": bool, "start_from": [checkpoint, run_dir],
"nan_loss": [rank, step], "probe_dtype": path}``; with ``start_from`` rank 0 first copies that
checkpoint to ``run_dir/checkpoint.pt`` so the job resumes from it; with ``nan_loss`` that
rank's loss at that step is NaN (the other ranks' losses stay finite); with ``probe_dtype``
rank 0 writes to ``path`` the dtype of the student's patch embedding inside the forward (FSDP2
has gathered it by then: the mixed-precision policy's ``param_dtype``).
A plain file (not an importable test module) so that the processes import nothing from pytest,
and one launch serves several runs (process start-up dominates on CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastdino_cli.config import resolve_config
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train.distributed import shutdown
from fastdino_cli.train.loop import pretrain


def main(path: str) -> None:
    torch.set_num_threads(1)
    for job in json.loads(Path(path).read_text()):
        if "start_from" in job:
            src, run_dir = (Path(p) for p in job["start_from"])
            if int(os.environ["RANK"]) == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, run_dir / "checkpoint.pt")
            dist.barrier()  # initialised by the previous job's Accelerator
        cfg = resolve_config(None, None, job["overrides"])
        real = SSLMetaArch.forward
        if "nan_loss" in job:
            SSLMetaArch.forward = _nan_forward(real, *job["nan_loss"])
        if "probe_dtype" in job:
            SSLMetaArch.forward = _probe_forward(real, Path(job["probe_dtype"]))
        try:
            pretrain(cfg, force_config=job.get("force_config", False), progress=False)
        finally:
            SSLMetaArch.forward = real
    shutdown()


def _nan_forward(real, rank: int, step: int):
    def forward(self, batch, *, teacher_temp):
        loss, metrics = real(self, batch, teacher_temp=teacher_temp)
        if int(os.environ["RANK"]) == rank and batch.step == step:
            loss = loss * float("nan")
        return loss, metrics

    return forward


def _probe_forward(real, path: Path):
    def forward(self, batch, *, teacher_temp):
        weight = next(self.student["backbone"].patch_embed.parameters())
        inside = str(weight.dtype)
        out = real(self, batch, teacher_temp=teacher_temp)
        if int(os.environ["RANK"]) == 0 and not path.exists():
            path.write_text(json.dumps({"forward": inside}))
        return out

    return forward


if __name__ == "__main__":
    main(sys.argv[1])
