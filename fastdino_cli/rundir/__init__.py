"""THE run directory: its names, its lock, its metrics log, its stored config, and the rule of
whether ``pretrain`` may start, resume or must refuse in it. Nothing else spells its names::

    RUN_DIR/
      config.yaml                  CONFIG           the resolved config (absolute paths)
      metrics.jsonl                METRICS          one JSON record per logged step
      checkpoint.pt                CHECKPOINT       the latest resumable checkpoint
      checkpoints/step_XXXXXXXX.pt CHECKPOINTS_DIR  rotated copies (step_copy_name)
      final.pt                     FINAL            the finished model
      .lock                        LOCK             held by the one process training here
      accelerate_config.yaml       ACCELERATE_CONFIG  written by ``pretrain --gpus N``
      probe.json                   PROBE_JSON       ``fastdino probe``
      probe/                       PROBE_DIR        its per-class CSV, figure, confusions
      corrupt-eval/ fourier/ gradcam/  EVAL_DIRS    the evaluations' outputs

Modules, one concept each (everything is importable from ``fastdino_cli.rundir``):

    layout         the names, checkpoint rotation, leftover temp files, a usable --out path
    metrics        the one writer (``MetricsWriter``) and reader (``read_metrics``) of the log
    lock           ``RunLock``: one process per run directory (flock, stale-lock takeover)
    stored_config  reading ``config.yaml``; comparing it with a new config (resume or refuse)
    resume         ``classify_run_dir``: empty, resumable, finished or broken
"""

from __future__ import annotations

from fastdino_cli.rundir.layout import (
    ACCELERATE_CONFIG,
    CHECKPOINT,
    CHECKPOINTS_DIR,
    CONFIG,
    CORRUPT_DIR,
    EVAL_DIRS,
    FINAL,
    FOURIER_DIR,
    GRADCAM_DIR,
    LOCK,
    METRICS,
    PROBE_DIR,
    PROBE_JSON,
    TENSORBOARD_DIR,
    check_run_dir_path,
    remove_partial_writes,
    rotate_checkpoint,
    step_copies,
    step_copy_name,
    step_of_copy,
)
from fastdino_cli.rundir.lock import RunLock, RunLocked
from fastdino_cli.rundir.metrics import (
    MetricsWriter,
    last_logged_step,
    last_metrics,
    read_metrics,
    truncate_metrics,
)
from fastdino_cli.rundir.resume import NotResumable, RunDirState, classify_run_dir
from fastdino_cli.rundir.stored_config import (
    RUN_CONTROL_KEYS,
    check_resume_config,
    config_differences,
    flatten,
    read_stored_config,
    resolve_stored_paths,
    stored_path_bases,
)

__all__ = [
    "ACCELERATE_CONFIG",
    "CHECKPOINT",
    "CHECKPOINTS_DIR",
    "CONFIG",
    "CORRUPT_DIR",
    "EVAL_DIRS",
    "FINAL",
    "FOURIER_DIR",
    "GRADCAM_DIR",
    "LOCK",
    "METRICS",
    "PROBE_DIR",
    "PROBE_JSON",
    "TENSORBOARD_DIR",
    "RUN_CONTROL_KEYS",
    "MetricsWriter",
    "NotResumable",
    "RunDirState",
    "RunLock",
    "RunLocked",
    "check_resume_config",
    "check_run_dir_path",
    "classify_run_dir",
    "config_differences",
    "flatten",
    "last_logged_step",
    "last_metrics",
    "read_metrics",
    "read_stored_config",
    "remove_partial_writes",
    "resolve_stored_paths",
    "rotate_checkpoint",
    "step_copies",
    "step_copy_name",
    "step_of_copy",
    "stored_path_bases",
    "truncate_metrics",
]
