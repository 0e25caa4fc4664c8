"""Where a ``pretrain`` call starts: at step 0, from ``checkpoint.pt``, or nowhere (refused).

What a run directory holds is decided by ``rundir.classify_run_dir`` alone; this module applies
it to one call (``--resume``, ``--force-config``), reads the checkpoint and checks that the new
config may continue it, and hands ``train/build.py`` a ``Resume``: the weights and the
``checkpoint.TrainState`` to continue from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli import rundir as rd
from fastdino_cli.checkpoint import TrainState
from fastdino_cli.config import Config, restate_stored_run
from fastdino_cli.errors import CheckpointError, ConfigError
from fastdino_cli.train import distributed as dist_utils


@dataclass(frozen=True)
class Resume:
    """A resumable checkpoint: the weights, and the ``TrainState`` to continue from."""

    student: Mapping[str, torch.Tensor]
    teacher: Mapping[str, torch.Tensor]
    state: TrainState
    metrics: Mapping[str, Any] | None = None
    """The checkpoint's last logged metrics (kept in a ``final.pt`` written from it)."""

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> Resume:
        """``CheckpointError`` when ``ckpt`` lacks what a resume needs."""
        if "student" not in ckpt or "train_state" not in ckpt:
            raise CheckpointError("it has no student weights or train_state: not resumable")
        state = TrainState.from_state_dict(ckpt["train_state"])
        return cls(ckpt["student"], ckpt["teacher"], state, ckpt.get("metrics"))


def decide_start(
    run_dir: Path, cfg: Config, resume: bool | None, force_config: bool
) -> Resume | None:
    """The checkpoint to resume from (None: start at step 0), after every safety check; what a
    run directory holds is decided by ``rundir.classify_run_dir`` alone."""
    latest = run_dir / rd.CHECKPOINT
    stored = rd.read_stored_config(run_dir)
    periods = [cfg.train.checkpoint_period]
    stored_period = rd.flatten(stored or {}).get("train.checkpoint_period")
    if isinstance(stored_period, int) and stored_period > 0:
        periods.append(stored_period)
    state = rd.classify_run_dir(run_dir, tuple(periods))
    if resume is False and state.holds_run:
        raise ConfigError(
            f"{run_dir} already holds a run; resume it with --resume or choose another --out"
        )
    if state.kind in ("finished", "broken"):
        raise rd.NotResumable(state.refusal())
    if state.kind == "empty":
        if resume and not state.holds_run:
            raise ConfigError(f"nothing to resume in {run_dir}: it holds no {rd.CHECKPOINT}")
        if stored is not None:  # nothing trained yet: the stored world size is this one
            _, world = dist_utils.rank_and_world()
            old = restate_stored_run(stored, world, cfg, world)
            rd.check_resume_config(run_dir, old, cfg.to_dict(), force_config)
        return None
    try:
        ckpt = ckpt_io.load(latest)
    except CheckpointError as e:  # damaged outside fastdino (atomic saves never leave this)
        hint = f"; copy {state.copies[-1]} over it to resume from there" if state.copies else ""
        raise CheckpointError(f"{e}{hint}") from None
    if "train_state" not in ckpt:
        raise ConfigError(f"{latest} is not resumable (no train_state); choose another --out")
    old = dist_utils.config_for_this_world(ckpt, cfg)
    rd.check_resume_config(run_dir, old, cfg.to_dict(), force_config)
    try:
        return Resume.from_checkpoint(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{latest}: {e}") from None
