"""The run directory's file and folder names, and the files fastdino manages there as files.

Every name of a run directory is defined here and nowhere else; other modules import the names
(``from fastdino_cli.rundir import FINAL``), never spell them. Besides the names: the checkpoint
rotation (``checkpoints/step_XXXXXXXX.pt``), the removal of temp files a killed process left,
and the check that a run directory can be one (not a file, not under one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastdino_cli.errors import ConfigError
from fastdino_cli.fileio import TEMP_SUFFIX, atomic_write

CONFIG = "config.yaml"
"""The resolved config the run was started with (absolute paths)."""
METRICS = "metrics.jsonl"
"""One JSON record per logged step (the source of truth for curves and reports)."""
CHECKPOINT = "checkpoint.pt"
"""The latest resumable checkpoint (with ``train_state``)."""
CHECKPOINTS_DIR = "checkpoints"
"""Rotated copies ``checkpoints/step_XXXXXXXX.pt`` (``train.keep_checkpoints``)."""
FINAL = "final.pt"
"""The finished model (no ``train_state``); what every evaluation reads by default."""
LOCK = ".lock"
"""Held (``flock``) by the one process training in the directory."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files of ``train.trackers: [tensorboard]`` (a live view; metrics.jsonl
stays the source of truth)."""
ACCELERATE_CONFIG = "accelerate_config.yaml"
"""The launch config ``pretrain --gpus N`` writes and re-executes itself with."""
PROBE_JSON = "probe.json"
"""``fastdino probe``'s results for the run's final checkpoint."""
PROBE_DIR = "probe"
"""``fastdino probe``'s per-class CSV and figure, and top confusions (``<checkpoint stem>_*``)."""
CORRUPT_DIR = "corrupt-eval"
"""``fastdino corrupt-eval``'s outputs."""
FOURIER_DIR = "fourier"
"""``fastdino fourier-heatmap``'s outputs."""
GRADCAM_DIR = "gradcam"
"""``fastdino gradcam``'s outputs."""
EVAL_DIRS = (CORRUPT_DIR, FOURIER_DIR, GRADCAM_DIR)

_STEP_PREFIX = "step_"


def step_copy_name(step: int) -> str:
    """File name of the rotated checkpoint of ``step`` inside ``CHECKPOINTS_DIR``."""
    return f"{_STEP_PREFIX}{step:08d}.pt"


def step_copies(run_dir: Path) -> tuple[Path, ...]:
    """The rotated checkpoints ``checkpoints/step_*.pt``, oldest first."""
    return tuple(sorted((Path(run_dir) / CHECKPOINTS_DIR).glob(f"{_STEP_PREFIX}*.pt")))


def step_of_copy(copy: Path) -> int | None:
    """The step a rotated checkpoint's name says (None: not such a name)."""
    try:
        return int(Path(copy).stem.removeprefix(_STEP_PREFIX))
    except ValueError:
        return None


def check_run_dir_path(run_dir: Path) -> None:
    """``ConfigError`` when ``run_dir`` cannot be a run directory: it is a file, or a file
    stands where one of its parent folders would be (one line instead of an ``OSError`` about
    ``.lock`` later)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"the run directory {run_dir} is a file, not a folder: choose another --out "
            "(train.output_dir), a new folder or one that holds a run to resume"
        )
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"the run directory {run_dir} cannot be created: {parent} is a file, not "
                    "a folder: choose another --out (train.output_dir)"
                )
            return


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temp files a killed process left half-written (call only while holding the lock):
    ``fileio.atomic_write``'s ``.NAME.XXXX.tmp`` beside the run's files and its checkpoints."""
    run_dir = Path(run_dir)
    for pattern in (f".*{TEMP_SUFFIX}", f"{CHECKPOINTS_DIR}/.*{TEMP_SUFFIX}"):
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)


def rotate_checkpoint(run_dir: Path, latest: Path, step: int, keep: int) -> None:
    """Copy ``latest`` to ``checkpoints/step_XXXXXXXX.pt`` and keep the newest ``keep``.

    A hard link where the filesystem has them (no bytes copied: ``latest`` is replaced by the
    next save, never rewritten in place), linked under a temporary name and renamed so that an
    existing ``step_*.pt`` is replaced atomically; else a copy through ``atomic_write``.
    """
    if keep <= 0:
        return
    folder = Path(run_dir) / CHECKPOINTS_DIR
    folder.mkdir(exist_ok=True)
    target = folder / step_copy_name(step)
    tmp = folder / f".{target.name}.link{TEMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(latest, tmp)
    except OSError:
        with open(latest, "rb") as src:
            atomic_write(target, lambda f: shutil.copyfileobj(src, f, 1 << 24))
    else:
        os.replace(tmp, target)
    for old in step_copies(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
