"""``fastdino pretrain --gpus N``: re-execute the same command under ``accelerate launch``.

A user should not need a launcher of their own for one machine with several GPUs. With
``--gpus N`` (N > 1) the command writes an Accelerate config into the run directory and runs::

    python -m accelerate.commands.launch --config_file RUN_DIR/accelerate_config.yaml \\
        -m fastdino_cli pretrain <the same options, without --gpus>

with ``FASTDINO_LAUNCHED=1`` in the environment: the child processes see it (or the
``LOCAL_RANK`` / ``WORLD_SIZE`` variables any launcher sets) and train in-process instead of
launching again, so the re-execution can never recurse.

The config asks Accelerate for plain multi-process execution (``distributed_type: MULTI_GPU``):
fastdino applies FSDP2 itself (``train/distributed.py``, driven by the ``distributed.*`` config
keys), so the sharding code is the same whether ``torchrun``, ``accelerate launch`` or this
re-execution started the processes. Several machines: run ``accelerate launch`` yourself with
``--num_machines``, ``--machine_rank``, ``--main_process_ip`` and ``--main_process_port``
(docs/scaling-out.md, ``examples/slurm_fastdino.sbatch``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from fastdino_cli.errors import ConfigError
from fastdino_cli.fileio import write_text
from fastdino_cli.rundir import ACCELERATE_CONFIG

GUARD = "FASTDINO_LAUNCHED"


def already_launched(env: dict[str, str] | None = None) -> bool:
    """True inside processes started by a launcher (ours, accelerate or torchrun)."""
    env = os.environ if env is None else env
    return env.get(GUARD) == "1" or "LOCAL_RANK" in env or "WORLD_SIZE" in env


def rank(env: dict[str, str] | None = None) -> int:
    """This process's global rank as set by the launcher (0 outside any launcher)."""
    env = os.environ if env is None else env
    return int(env.get("RANK", "0"))


def accelerate_config(num_processes: int, *, main_process_port: int | None = None) -> dict:
    """An Accelerate launch config for ``num_processes`` GPUs on this machine."""
    if num_processes < 1:
        raise ConfigError(f"--gpus must be at least 1, got {num_processes}")
    cfg = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if num_processes > 1 else "NO",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": num_processes,
        "gpu_ids": "all",
        "mixed_precision": "no",  # fastdino sets precision itself (train.precision)
        "dynamo_backend": "no",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "main_training_function": "main",
    }
    if main_process_port is not None:
        cfg["main_process_port"] = main_process_port
    return cfg


def write_accelerate_config(run_dir: Path, num_processes: int) -> Path:
    """Write the launch config into the run directory (kept with the run for reference)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ACCELERATE_CONFIG
    header = (
        "# Written by `fastdino pretrain --gpus`: plain multi-process launch; fastdino applies\n"
        "# FSDP2 itself from the run's `distributed.*` config keys.\n"
    )
    text = yaml.safe_dump(accelerate_config(num_processes), sort_keys=False)
    write_text(path, header + text)
    return path


def relaunch_command(config_path: Path, pretrain_args: list[str]) -> list[str]:
    """The command line of the re-execution (``pretrain_args`` exclude ``--gpus``)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        "-m",
        "fastdino_cli",
        "pretrain",
        *pretrain_args,
    ]


def relaunch(run_dir: Path, num_processes: int, pretrain_args: list[str]) -> None:
    """Replace this process by ``accelerate launch`` of ``pretrain`` on ``num_processes`` GPUs.

    ``exec`` (not a child process) so that SIGTERM from a scheduler reaches the launcher, which
    forwards it to the training processes (they checkpoint and stop together).
    """
    import torch

    available = torch.cuda.device_count()
    if available < num_processes:
        raise ConfigError(
            f"--gpus {num_processes} asks for {num_processes} GPUs but this machine has "
            f"{available}; lower --gpus (several machines: see docs/scaling-out.md)"
        )
    config_path = write_accelerate_config(run_dir, num_processes)
    cmd = relaunch_command(config_path, pretrain_args)
    print("fastdino: launching " + " ".join(cmd), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, {**os.environ, GUARD: "1"})
