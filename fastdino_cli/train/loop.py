"""``pretrain(cfg)``: the DINOv2 / FastDINOv2 training loop. Orchestration only.

One process (CPU or one GPU) or many (FSDP2, ``train/distributed.py``), through Accelerate; the
stack it drives (model, optimizer, schedules, step, loader) comes from ``train/build.py``. A call
runs in named phases::

    lock the run directory          rundir.RunLock (one process per directory)
    _decide_start                   fresh, resume (checkpoint.pt), or refuse (rundir's rules)
    _training_images                scan data.train once
    build_training                  the stack, fresh or restored from the checkpoint
    _open_run_dir                   config.yaml, metrics.jsonl cut back to the resumed step
    _train                          the steps (below), checkpoints, stop signals
    _finish                         final.pt, the result

Per iteration ``s`` of ``_train``::

    batch(s)  <- workers build the crops of the stage of step s (the sampler carries s)
    queue s   -> train.step.TrainStep: restart, schedules, forward, backward, clipping, AdamW,
                 EMA, all on the device; a non-finite loss skips the step there
    settle s-1 on the host (its scalars arrived while s was queued): log, count non-finite
                 steps (stop after train.max_bad_steps in a row), SIGTERM / SIGINT of any rank
    checkpoint after s when due (settling s first: saving waits for the device anyway)

The host reads a step's results one step late so that it never waits for the GPU inside a step.
SIGTERM (a scheduler) and SIGINT (Ctrl-C) both finish the step in progress, write
``checkpoint.pt`` and stop (``RunResult.stopped``: ``sigterm`` / ``sigint``); a second Ctrl-C
interrupts at once.

Exact resume: ``checkpoint.pt`` holds the weights and a ``checkpoint.TrainState`` (AdamW and
grad-scaler state, loss centres, RNG states, the step); the sample order and every augmentation
are pure functions of (seed, step), so a resumed run computes bit for bit what the uninterrupted
run would have (CPU).
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli import rundir as rd
from fastdino_cli.checkpoint import TrainState, rng_state
from fastdino_cli.config import Config, run_config_yaml, with_absolute_paths
from fastdino_cli.curriculum import stage_at_step
from fastdino_cli.data.images import first_readable, resolve_root, scan_images
from fastdino_cli.errors import ConfigError, FastdinoError
from fastdino_cli.fileio import write_text
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train import distributed as dist_utils
from fastdino_cli.train.build import (
    TrainingStack,
    build_accelerator,
    build_train_loader,
    build_training,
)
from fastdino_cli.train.distill import resolve_distill
from fastdino_cli.train.loader import StepRange, resolve_num_workers
from fastdino_cli.train.progress import ProgressReporter
from fastdino_cli.train.resume import decide_start
from fastdino_cli.train.settle import Settler, TrainingDiverged
from fastdino_cli.train.signals import StopSignals
from fastdino_cli.train.step import PendingStep
from fastdino_cli.train.tracking import open_trackers

__all__ = ["RunResult", "TrainingDiverged", "pretrain"]

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM)
SKIPPED_FILES_SHOWN = 5
"""Unreadable images named one line each; past these, only the count at the end."""


@dataclass
class RunResult:
    """What a finished (or interrupted) ``pretrain`` call produced."""

    run_dir: Path
    steps_done: int
    total_steps: int
    final_checkpoint: Path | None
    stopped: str
    """``finished``, ``max_steps``, ``sigterm``, ``sigint`` or ``already-finished``."""
    resumed_from: int | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    bad_steps: int = 0


def pretrain(
    cfg: Config,
    *,
    resume: bool | None = None,
    force_config: bool = False,
    progress: bool | None = None,
) -> RunResult:
    """Train (or resume) the run in ``cfg.train.output_dir``; see the module docstring.

    Args:
        cfg: the resolved config.
        resume: None resumes automatically when the output folder holds a run; True requires
            one; False refuses to touch an existing run.
        force_config: resume even though the config differs from the stored one.
        progress: rich progress bar (None: only when stdout is a terminal).
    """
    if not cfg.data.train:
        raise ConfigError("data.train is not set; pass data.train=DIR (or data.train=demo)")
    cfg = with_absolute_paths(cfg)  # stored in config.yaml: the run means the same from anywhere
    cfg = resolve_distill(cfg)  # distill.teacher: no masking / drop path, the teacher's heads
    run_dir = Path(cfg.train.output_dir)
    rd.check_run_dir_path(run_dir)
    accelerator = build_accelerator(cfg.train.precision)
    main = accelerator.is_main_process
    lock = rd.RunLock(run_dir) if main else None
    if lock:
        lock.__enter__()
        rd.remove_partial_writes(run_dir)
    try:
        return _run(cfg, run_dir, accelerator, resume, force_config, progress)
    except OSError as e:  # disk full, quota, read-only: one line, the last checkpoint is kept
        in_run_dir = bool(e.filename) and Path(e.filename).resolve().is_relative_to(
            run_dir.resolve()
        )
        if not (e.errno in _DISK_ERRNOS or (e.errno in _ACCESS_ERRNOS and in_run_dir)):
            raise
        raise FastdinoError(
            f"cannot write {e.filename or run_dir}: {e.strerror}; the last checkpoint "
            f"{run_dir / rd.CHECKPOINT} is intact: free space or fix permissions, then run "
            "the same command again to resume"
        ) from e
    finally:
        if lock:
            lock.__exit__()


def _run(cfg: Config, run_dir: Path, accelerator, resume, force_config, progress) -> RunResult:
    """The phases of one ``pretrain`` call, under the run directory's lock."""
    cfg.batch(accelerator.num_processes)  # an indivisible global batch: one line, nothing written
    resume_from = decide_start(run_dir, cfg, resume, force_config)
    dist_utils.barrier()  # every rank decided before rank 0 writes into the run directory
    total = cfg.total_iterations
    steps = StepRange(
        start=resume_from.state.step if resume_from else 0,
        stop=min(total, cfg.train.max_steps) if cfg.train.max_steps else total,
        total=total,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    files = _training_images(cfg.data.train)
    stack = build_training(cfg, accelerator=accelerator, resume=resume_from)
    main = accelerator.is_main_process
    if main:
        _open_run_dir(run_dir, cfg, steps.start, steps.world_size)
    result = RunResult(
        run_dir,
        steps.start,
        total,
        None,
        "finished",
        resumed_from=steps.start if resume_from else None,
    )
    if steps.start >= steps.stop:
        assert resume_from is not None  # a fresh run has at least one step to do
        return _already_finished(stack, cfg, run_dir, result, resume_from.metrics)
    bad = resume_from.state.bad_steps if resume_from else 0
    loader = build_train_loader(cfg, files, steps, accelerator.device)
    reporter = ProgressReporter(
        run_dir / rd.METRICS if main else None,
        start=steps.start,
        stop=steps.stop,
        total=total,
        log_period=cfg.train.log_period,
        global_batch=cfg.batch(steps.world_size).global_batch,
        rich=progress,
        enabled=main,
        trackers=open_trackers(
            cfg.train.trackers, run_dir, start=steps.start, config=cfg.to_dict(), enabled=main
        ),
    )
    with reporter:
        outcome = _train(stack, loader, reporter, cfg, run_dir, steps, bad)
    return _finish(stack, cfg, run_dir, result, outcome, reporter)


def _training_images(train: str) -> list[Path]:
    """The image files of ``data.train`` (scanned once), with at least one readable."""
    files = scan_images(resolve_root(train))
    first_readable(files, limit=min(len(files), 1000))
    return files


def _open_run_dir(run_dir: Path, cfg: Config, start: int, world_size: int) -> None:
    """The run's config (headed by where it departs from its paper recipe), and its log cut
    back to the steps the resumed state includes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / rd.CONFIG, run_config_yaml(cfg, world_size))
    rd.truncate_metrics(run_dir / rd.METRICS, start)


def _already_finished(
    stack: TrainingStack, cfg: Config, run_dir: Path, result: RunResult, metrics
) -> RunResult:
    """Nothing left to train: write ``final.pt`` (with the checkpoint's ``metrics``) if a
    finished run lacks it."""
    result.stopped = "already-finished"
    final = run_dir / rd.FINAL
    if not final.exists() and result.steps_done >= result.total_steps:
        ckpt = _checkpoint(stack.core, cfg, metrics=metrics)
        if stack.accelerator.is_main_process:
            ckpt_io.save(ckpt, final)
        dist_utils.barrier()
    result.final_checkpoint = final if final.exists() else None
    return result


@dataclass
class _Outcome:
    """What ``_train`` did."""

    steps_done: int
    stopped: str | None = None
    """``sigterm`` / ``sigint`` when a stop signal ended it, else None."""
    bad_steps: int = 0
    skipped_files: set[str] = field(default_factory=set)


def _train(
    stack: TrainingStack,
    loader: Iterable,
    reporter: ProgressReporter,
    cfg: Config,
    run_dir: Path,
    steps: StepRange,
    bad: int,
) -> _Outcome:
    """The steps ``steps.start .. steps.stop - 1``: queue each, settle the one before, save
    when due or asked to stop (see the module docstring)."""
    settler = Settler(
        reporter,
        cfg.curriculum,
        start=steps.start,
        total=steps.total,
        max_bad_steps=cfg.train.max_bad_steps,
        bad=bad,
        latest=run_dir / rd.CHECKPOINT,
    )
    outcome = _Outcome(steps.start)
    in_process = resolve_num_workers(cfg.data.num_workers) == 0  # no loader workers
    pending: PendingStep | None = None  # queued on the device, not yet settled on the host
    with StopSignals() as signals:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                with _single_threaded(in_process):
                    batch = next(it)
            except StopIteration:
                break
            wait = time.perf_counter() - t0
            _report_skipped(reporter, batch.skipped_files, outcome.skipped_files)
            queued = stack.step(batch, stop_requested=signals.received is not None)
            stage = stage_at_step(cfg.curriculum, batch.step, steps.total, cfg.crops)
            queued.info = _step_info(batch, stage, wait)
            # the previous step has finished on the device by now, or soon: this one is queued
            # behind it, so waiting for its scalars leaves the GPU busy
            stop_now = pending is not None and settler.settle(pending)[1]
            pending, outcome.steps_done = queued, batch.step + 1
            periodic = outcome.steps_done % cfg.train.checkpoint_period == 0
            if not (stop_now or periodic or outcome.steps_done == steps.stop):
                continue
            finite, stop_asked = settler.settle(pending)  # a checkpoint waits for the device
            pending = None
            stop_now = stop_now or stop_asked
            if stop_now or finite:
                _save_resumable(
                    stack,
                    cfg,
                    run_dir,
                    step=outcome.steps_done,
                    stage=stage.index,
                    bad_steps=settler.bad,
                    metrics=reporter.last,
                    keep=cfg.train.keep_checkpoints if periodic else 0,
                )
            if stop_now:
                outcome.stopped = signals.received or "sigterm"  # another rank's signal
                break
        if pending is not None:
            settler.settle(pending)
    outcome.bad_steps = settler.bad
    return outcome


def _step_info(batch, stage, wait: float) -> dict[str, Any]:
    """Host-side values of a step's record: its stage, crop sizes and data wait."""
    return {
        "stage": stage.index,
        "stage_name": stage.name,
        "global_crops_size": int(batch.global_crops.shape[-1]),
        "local_crops_size": int(batch.local_crops.shape[-1])
        if batch.local_crops is not None
        else None,
        "noise_patching": stage.noise_patching.enabled,
        "data_wait_s": wait,
    }


def _report_skipped(reporter: ProgressReporter, files: Iterable[str], seen: set[str]) -> None:
    """One line per unreadable image the first time it is skipped, for the first few; the
    total is reported at the end (``_finish``)."""
    for f in files:
        if f in seen:
            continue
        seen.add(f)
        if len(seen) <= SKIPPED_FILES_SHOWN:
            reporter.note(f"skipping unreadable image {f}")
        if len(seen) == SKIPPED_FILES_SHOWN + 1:
            reporter.note("more unreadable images are skipped; their count follows at the end")


def _finish(
    stack: TrainingStack,
    cfg: Config,
    run_dir: Path,
    result: RunResult,
    outcome: _Outcome,
    reporter: ProgressReporter,
) -> RunResult:
    """``final.pt`` unless a signal stopped the run; the result."""
    result.steps_done = outcome.steps_done
    result.last_metrics = reporter.last
    result.skipped_files = sorted(outcome.skipped_files)
    result.bad_steps = outcome.bad_steps
    if outcome.stopped:
        result.stopped = outcome.stopped
    else:
        result.stopped = "finished" if outcome.steps_done >= result.total_steps else "max_steps"
        final = run_dir / rd.FINAL
        final_ckpt = _checkpoint(stack.core, cfg, metrics=reporter.last)
        if stack.accelerator.is_main_process:
            ckpt_io.save(final_ckpt, final)
        result.final_checkpoint = final
        dist_utils.barrier()
    if outcome.skipped_files:
        reporter.note(
            f"skipped {len(outcome.skipped_files)} unreadable image file(s) during training"
        )
    return result


def _checkpoint(model: SSLMetaArch, cfg: Config, train_state=None, metrics=None) -> dict:
    # a collective when sharded: every rank calls it, only rank 0 gets the tensors
    student, teacher = dist_utils.full_state_dicts(model)
    return ckpt_io.make_checkpoint(
        config=cfg.to_dict(),
        arch=model.student["backbone"].arch_dict(),
        teacher=teacher,
        student=student,
        train_state=train_state,
        metrics=metrics,
    )


def _save_resumable(
    stack: TrainingStack,
    cfg: Config,
    run_dir: Path,
    *,
    step: int,
    stage: int,
    bad_steps: int,
    metrics: dict[str, Any],
    keep: int,
) -> None:
    """``checkpoint.pt`` after ``step`` steps (and its rotated copy when ``keep``): the
    weights and the ``TrainState`` gathered from the stack. Every rank takes part in gathering
    the full state; only rank 0 writes."""
    optimizer_state = dist_utils.full_optimizer_state(stack.core, stack.inner_optimizer)
    rng_per_rank = dist_utils.gather_objects(rng_state())
    ckpt = _checkpoint(stack.core, cfg, None, metrics or None)
    if not stack.accelerator.is_main_process:
        dist_utils.barrier()
        return
    scaler = stack.precision.scaler
    state = TrainState(
        step=step,
        stage=stage,
        optimizer=optimizer_state,
        scaler=scaler.state_dict() if scaler is not None else None,
        loss=stack.core.loss_state_dict(),
        rng=rng_state(),
        data_position=step * cfg.batch(stack.world_size).global_batch,
        bad_steps=bad_steps,
        world_size=stack.world_size,
        rng_per_rank=rng_per_rank,
    )
    ckpt["train_state"] = state.state_dict()
    latest = ckpt_io.save(ckpt, run_dir / rd.CHECKPOINT)
    rd.rotate_checkpoint(run_dir, latest, step, keep)
    dist_utils.barrier()


@contextlib.contextmanager
def _single_threaded(active: bool):
    """Build batches in the main process with one intra-op thread, as workers do.

    Augmenting small crops spawns thousands of tiny tensor ops; with several threads each pays
    a thread-pool synchronisation, which is slower than the op itself (and much slower on a
    busy machine).
    """
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
