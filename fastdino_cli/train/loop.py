"""``pretrain(cfg)``: the DINOv2 / FastDINOv2 training loop.

One process (CPU or one GPU) or many (FSDP2, ``train/distributed.py``), through Accelerate;
student and teacher live in one ``SSLMetaArch`` and every computation goes through its
``forward``. Per iteration ``s``::

    batch(s)  <- workers build the crops of the stage of step s (the sampler carries s)
    queue s   -> train.step.TrainStep: restart, schedules, forward, backward, clipping, AdamW,
                 EMA, all on the device; a non-finite loss skips the step there
    settle s-1 on the host (its scalars arrived while s was queued): log, count non-finite
                 steps (stop after train.max_bad_steps in a row), SIGTERM of any rank
    checkpoint after s when due (settling s first: saving waits for the device anyway)

The host reads a step's results one step late so that it never waits for the GPU inside a step.

Exact resume: ``checkpoint.pt`` holds the weights, AdamW and grad-scaler state, loss centres,
RNG states and the step; the sample order and every augmentation are pure functions of
(seed, step), so a resumed run computes bit for bit what the uninterrupted run would have (CPU).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli import rundir as rd
from fastdino_cli.config import Config, config_to_yaml, with_absolute_paths
from fastdino_cli.curriculum import is_restart_step, stage_at_step
from fastdino_cli.data.images import first_readable, resolve_root, scan_images
from fastdino_cli.data.multicrop import seed_for
from fastdino_cli.errors import CheckpointError, ConfigError, FastdinoError
from fastdino_cli.fileio import write_text
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train import distributed as dist_utils
from fastdino_cli.train.loader import build_loader
from fastdino_cli.train.progress import ProgressReporter
from fastdino_cli.train.schedules import Schedules, build_param_groups
from fastdino_cli.train.step import PendingStep, TrainStep
from fastdino_cli.train.step_options import apply_step_options, fused_adamw

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM)


class TrainingDiverged(FastdinoError):
    """Too many consecutive non-finite losses."""


@dataclass
class RunResult:
    """What a finished (or interrupted) ``pretrain`` call produced."""

    run_dir: Path
    steps_done: int
    total_steps: int
    final_checkpoint: Path | None
    stopped: str
    """``finished``, ``max_steps``, ``sigterm`` or ``already-finished``."""
    resumed_from: int | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    bad_steps: int = 0


def build_accelerator(precision: str):
    """The run's ``Accelerator``: CUDA when there is one, with ``train.precision``'s autocast
    (``auto``: bf16 where supported, else fp16 with a grad scaler); CPU runs in fp32."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if not cuda:
        mixed = "no"
    elif precision == "auto":
        mixed = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    return Accelerator(cpu=not cuda, mixed_precision=mixed)


def build_schedules(cfg: Config, global_batch: int) -> Schedules:
    """The run's schedules (lr scaled for ``global_batch`` images per step, all ranks)."""
    return Schedules(
        optim=cfg.optim,
        teacher=cfg.teacher,
        curriculum=cfg.curriculum,
        epoch_length=cfg.train.epoch_length,
        total_steps=cfg.total_iterations,
        global_batch=global_batch,
    )


def _unwrap(accelerator, model) -> SSLMetaArch:
    return accelerator.unwrap_model(model)


def _inner_optimizer(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self) -> None:
        self.set = False
        self._old = None

    def __enter__(self) -> _SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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


def _decide_start(
    run_dir: Path, cfg: Config, resume: bool | None, force_config: bool
) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start at step 0), after every safety check; what a
    run directory holds is decided by ``rundir.classify_run_dir`` alone."""
    latest = run_dir / "checkpoint.pt"
    stored = rd.load_config_yaml_dict(run_dir / "config.yaml")
    periods = [cfg.train.checkpoint_period]
    stored_period = rd.flatten(stored).get("train.checkpoint_period")
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
            raise ConfigError(f"nothing to resume in {run_dir}: it holds no checkpoint.pt")
        if (run_dir / "config.yaml").exists():
            rd.check_resume_config(run_dir, stored, cfg.to_dict(), force_config)
        return None
    try:
        ckpt = ckpt_io.load(latest)
    except CheckpointError as e:  # damaged outside fastdino (atomic saves never leave this)
        hint = f"; copy {state.copies[-1]} over it to resume from there" if state.copies else ""
        raise CheckpointError(f"{e}{hint}") from None
    if "train_state" not in ckpt:
        raise ConfigError(f"{latest} is not resumable (no train_state); choose another --out")
    old = dist_utils.config_for_this_world(ckpt, cfg.train.batch_size_per_gpu)
    rd.check_resume_config(run_dir, old, cfg.to_dict(), force_config)
    return ckpt


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
    run_dir = Path(cfg.train.output_dir)
    accelerator = build_accelerator(cfg.train.precision)
    main = accelerator.is_main_process
    lock = rd.RunLock(run_dir) if main else None
    if lock:
        lock.__enter__()
        rd.remove_partial_writes(run_dir)
    try:
        return _run(cfg, run_dir, accelerator, resume, force_config, progress, main)
    except OSError as e:  # disk full, quota, read-only: one line, the last checkpoint is kept
        in_run_dir = bool(e.filename) and Path(e.filename).resolve().is_relative_to(
            run_dir.resolve()
        )
        if not (e.errno in _DISK_ERRNOS or (e.errno in _ACCESS_ERRNOS and in_run_dir)):
            raise
        raise FastdinoError(
            f"cannot write {e.filename or run_dir}: {e.strerror}; the last checkpoint "
            f"{run_dir / 'checkpoint.pt'} is intact: free space or fix permissions, then run "
            "the same command again to resume"
        ) from e
    finally:
        if lock:
            lock.__exit__()


def _run(cfg, run_dir, accelerator, resume, force_config, progress, main) -> RunResult:
    ckpt = _decide_start(run_dir, cfg, resume, force_config)
    dist_utils.barrier()  # every rank decided before rank 0 writes into the run directory
    total = cfg.total_iterations
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    start = int(ckpt["train_state"]["step"]) if ckpt else 0
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.train.batch_size_per_gpu * world

    files = scan_images(resolve_root(cfg.data.train))
    first_readable(files, limit=min(len(files), 1000))

    torch.manual_seed(cfg.train.seed)
    model = SSLMetaArch(
        model=cfg.model, dino=cfg.dino, ibot=cfg.ibot, centering=cfg.train.centering
    )
    apply_step_options(  # activation checkpointing, then compile, then FSDP
        model,
        compile=cfg.model.compile,
        activation_checkpointing=cfg.model.activation_checkpointing,
    )
    sharded = dist_utils.fsdp_enabled(cfg.distributed, world)
    if sharded:  # before the optimizer: fully_shard replaces the parameters
        dist_utils.apply_fsdp(
            model, cfg.distributed, cfg.train.precision, device=accelerator.device
        )
    groups = build_param_groups(model.student, cfg.optim, model.n_blocks)
    fused = fused_adamw(cfg.optim.fused, accelerator.device)
    optimizer = torch.optim.AdamW(
        groups, lr=0.0, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2), fused=fused
    )
    torch.manual_seed(seed_for(cfg.train.seed, rank, 1))
    if ckpt:
        dist_utils.load_full_state(model, ckpt["student"], ckpt["teacher"])
        ts = ckpt["train_state"]
        dist_utils.load_optimizer_state(model, optimizer, ts["optimizer"])
        model.load_loss_state_dict(ts["loss"])
        per_rank = ts.get("rng_per_rank")
        same_world = per_rank is not None and len(per_rank) == world
        rd.set_rng_state(per_rank[rank] if same_world else ts["rng"])
    if not sharded:
        model.to(accelerator.device)
        model, optimizer = accelerator.prepare(model, optimizer)
    if ckpt and ckpt["train_state"].get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(ckpt["train_state"]["scaler"])
    core = _unwrap(accelerator, model)
    core.train()

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        rd.truncate_metrics(run_dir / "metrics.jsonl", start)
    schedules = build_schedules(cfg, global_batch)
    result = RunResult(
        run_dir, start, total, None, "finished", resumed_from=start if ckpt else None
    )
    if start >= stop:
        result.stopped = "already-finished"
        if not (run_dir / "final.pt").exists() and start >= total:
            final = _checkpoint(core, cfg, metrics=ckpt.get("metrics"))
            if main:
                ckpt_io.save(final, run_dir / "final.pt")
            dist_utils.barrier()
        result.final_checkpoint = run_dir / "final.pt" if (run_dir / "final.pt").exists() else None
        return result

    loader = build_loader(cfg, files, total, start, stop, rank, world, accelerator.device)
    bad = int(ckpt["train_state"].get("bad_steps", 0)) if ckpt else 0
    reporter = ProgressReporter(
        run_dir / "metrics.jsonl" if main else None,
        start=start,
        stop=stop,
        total=total,
        log_period=cfg.train.log_period,
        global_batch=global_batch,
        rich=progress,
        enabled=main,
    )
    seen_skipped: set[str] = set()
    step_done = start
    train_step = TrainStep(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        schedules=schedules,
        clip_grad=cfg.optim.clip_grad,
        is_restart=lambda s: is_restart_step(cfg.curriculum, s, total),
    )
    settler = _Settler(reporter, cfg, start, total, bad, run_dir / "checkpoint.pt")
    settle = settler.settle
    pending: PendingStep | None = None  # queued on the device, not yet settled on the host
    with _SigtermFlag() as sigterm, reporter:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                with _single_threaded(cfg.data.num_workers == 0):
                    batch = next(it)
            except StopIteration:
                break
            wait = time.perf_counter() - t0
            step = batch.step
            for f in batch.skipped_files:
                if f not in seen_skipped:
                    seen_skipped.add(f)
                    warnings.warn(f"skipping unreadable image {f}", stacklevel=1)
            queued = train_step(batch, stop_requested=sigterm.set)
            stage = stage_at_step(cfg.curriculum, step, total, cfg.crops)
            queued.info = {
                "stage": stage.index,
                "stage_name": stage.name,
                "global_crops_size": int(batch.global_crops.shape[-1]),
                "local_crops_size": int(batch.local_crops.shape[-1])
                if batch.local_crops is not None
                else None,
                "noise_patching": stage.noise_patching.enabled,
                "data_wait_s": wait,
            }
            # the previous step has finished on the device by now, or soon: this one is queued
            # behind it, so waiting for its scalars leaves the GPU busy
            stop_now = pending is not None and settle(pending)[1]
            pending, step_done = queued, step + 1
            periodic = step_done % cfg.train.checkpoint_period == 0
            if not (stop_now or periodic or step_done == stop):
                continue
            finite, stop_asked = settle(pending)  # a checkpoint waits for the device anyway
            pending = None
            stop_now = stop_now or stop_asked
            if stop_now or finite:
                _save_resumable(
                    accelerator,
                    core,
                    optimizer,
                    cfg,
                    run_dir,
                    step_done,
                    stage.index,
                    settler.bad,
                    reporter.last,
                    keep=cfg.train.keep_checkpoints if periodic else 0,
                )
            if stop_now:
                result.stopped = "sigterm"
                break
        if pending is not None:
            settle(pending)
    bad = settler.bad
    result.steps_done = step_done
    result.last_metrics = reporter.last
    result.skipped_files = sorted(seen_skipped)
    result.bad_steps = bad
    if result.stopped != "sigterm":
        result.stopped = "finished" if step_done >= total else "max_steps"
        final = run_dir / "final.pt"
        final_ckpt = _checkpoint(core, cfg, metrics=reporter.last)
        if main:
            ckpt_io.save(final_ckpt, final)
        result.final_checkpoint = final
        dist_utils.barrier()
    if seen_skipped and main:
        print(
            f"fastdino: skipped {len(seen_skipped)} unreadable image file(s) during training",
            file=sys.stderr,
        )
    return result


class _Settler:
    """Host bookkeeping of a queued step once its scalars are there: the record, the count of
    consecutive non-finite steps and the stop after ``train.max_bad_steps`` of them."""

    def __init__(self, reporter, cfg: Config, start: int, total: int, bad: int, latest: Path):
        self.reporter, self.cfg, self.start, self.total = reporter, cfg, start, total
        self.bad = bad
        """Consecutive non-finite steps so far (saved in the checkpoint)."""
        self.latest = latest

    def settle(self, pending: PendingStep) -> tuple[bool, bool]:
        """Log the step, count it, raise ``TrainingDiverged``; (applied, some rank asked to
        stop)."""
        record = pending.resolve()
        step, stop_requested = record["step"], record.pop("stop_requested")
        weights_finite = record.pop("weights_finite")
        self.bad = 0 if record["finite"] else self.bad + 1
        self.reporter.step(
            record,
            wait=record.pop("data_wait_s"),
            stage_changed=step == self.start or _stage_starts(self.cfg, step, self.total),
        )
        if not weights_finite:
            raise TrainingDiverged(
                f"step {step} made the weights non-finite (inf, nan or too large for float32; "
                f"loss {record['loss']:.4g}); {self._last_good()}; lower optim.base_lr or "
                "check the data"
            )
        if not record["finite"]:
            warnings.warn(
                f"step {step}: non-finite loss ({record['loss']}), step skipped", stacklevel=1
            )
            if self.bad >= self.cfg.train.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad} consecutive non-finite losses (last at step {step}); "
                    f"{self._last_good()}; lower optim.base_lr or check the data"
                )
        return record["finite"], stop_requested

    def _last_good(self) -> str:
        if self.latest.exists():
            return f"the last good checkpoint is {self.latest}"
        return "no checkpoint was written"


def _stage_starts(cfg: Config, step: int, total: int) -> bool:
    return step > 0 and (
        stage_at_step(cfg.curriculum, step, total).index
        != stage_at_step(cfg.curriculum, step - 1, total).index
    )


def _save_resumable(
    accelerator, core, optimizer, cfg, run_dir, step_done, stage, bad, metrics, keep
) -> None:
    # every rank takes part in gathering the full state; only rank 0 writes
    optimizer_state = dist_utils.full_optimizer_state(core, _inner_optimizer(optimizer))
    rng_per_rank = dist_utils.gather_objects(rd.rng_state())
    ckpt = _checkpoint(core, cfg, None, metrics or None)
    if not accelerator.is_main_process:
        dist_utils.barrier()
        return
    train_state = {
        "step": step_done,
        "stage": stage,
        "optimizer": optimizer_state,
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "loss": core.loss_state_dict(),
        "rng": rd.rng_state(),
        "data_position": step_done * cfg.train.batch_size_per_gpu * accelerator.num_processes,
        "bad_steps": bad,
        "world_size": accelerator.num_processes,
        "rng_per_rank": rng_per_rank,
    }
    ckpt["train_state"] = train_state
    latest = ckpt_io.save(ckpt, run_dir / "checkpoint.pt")
    rd.rotate_checkpoint(run_dir, latest, step_done, keep)
    dist_utils.barrier()
