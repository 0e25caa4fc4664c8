"""Run by ``tests/test_distributed.py`` under ``torchrun``: several ``pretrain`` calls in a row.

Usage: ``torchrun --nproc_per_node 2 tests/_distributed_worker.py JOBS.json``; each job is
``{"overrides": [...], "force_config": bool}``. A file (not an importable test module) so that the
spawned processes import nothing from pytest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fastdino_cli.config import resolve_config
from fastdino_cli.train.loop import pretrain


def main(path: str) -> None:
    torch.set_num_threads(1)
    for job in json.loads(Path(path).read_text()):
        cfg = resolve_config(None, None, job["overrides"])
        pretrain(cfg, force_config=job.get("force_config", False), progress=False)


if __name__ == "__main__":
    main(sys.argv[1])
