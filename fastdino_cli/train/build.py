"""The training stack of a config, assembled in one place: the loop, the benchmarks and the
tests train with the very same model, optimizer, schedules, step and loader.

``build_training(cfg)`` runs, in this order (it is the order of the random draws, so a resumed
run continues bit for bit)::

    accelerator   build_accelerator(): CUDA when there is one
    precision     build_precision(train.precision): autocast dtype, fp16 grad scaler
    model         torch.manual_seed(train.seed); SSLMetaArch(model, dino, ibot, centering)
                  (with distill.teacher: train/distill.py's DistillMetaArch, frozen teacher in);
                  activation checkpointing, then compile (``step_options``); FSDP2 when several
                  processes shard (``distributed``), before the optimizer sees the parameters
    optimizer     AdamW over build_param_groups(student, optim), fused per ``optim.fused``
    rng           torch.manual_seed(seed_for(train.seed, rank, TRAINING_STREAM))
    resume        weights, AdamW state, loss centres and RNG from a checkpoint's TrainState
    prepare       accelerator.prepare (device, DDP) when not sharded
    scaler        the fp16 grad scaler's state from the checkpoint
    schedules     lr / wd / momentum / teacher temperature for the global batch
    step          TrainStep (restart, schedules, forward, backward, clipping, AdamW, EMA)

The loader comes apart (``build_train_loader``): it depends on the image files and on which
steps a rank runs, not on the model. This is the one module that hands the whole ``Config`` out
in sections; each component takes only its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from fastdino_cli.checkpoint import set_rng_state
from fastdino_cli.config import Config, OptimConfig
from fastdino_cli.curriculum import is_restart_step
from fastdino_cli.seeding import TRAINING_STREAM, seed_for
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train import distributed as dist_utils
from fastdino_cli.train.loader import StepRange, build_loader
from fastdino_cli.train.precision import Precision, build_precision
from fastdino_cli.train.resume import Resume
from fastdino_cli.train.schedules import Schedules, build_param_groups
from fastdino_cli.train.step import TrainStep
from fastdino_cli.train.step_options import apply_step_options, fused_adamw


@dataclass
class TrainingStack:
    """What ``build_training`` returns: the prepared objects a training loop drives."""

    accelerator: Any
    model: torch.nn.Module
    """The prepared (or FSDP-sharded) ``SSLMetaArch``: what the step calls."""
    core: SSLMetaArch
    """The same model, unwrapped: state dicts, loss centres, EMA."""
    optimizer: torch.optim.Optimizer
    """The prepared AdamW (``inner_optimizer``: the ``torch.optim`` one)."""
    schedules: Schedules
    step: TrainStep
    sharded: bool
    precision: Precision
    """Autocast dtype and the fp16 grad scaler (``train/precision.py``)."""

    @property
    def inner_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes


def build_accelerator(precision: str = "auto"):
    """The run's ``Accelerator``: CUDA when there is one. It never autocasts: precision is
    ``train/precision.py``'s (the same code path on CPU and GPU); ``precision`` is accepted for
    callers that pass ``train.precision`` and is not used here."""
    from accelerate import Accelerator

    del precision
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")


def build_schedules(cfg: Config, *, world_size: int) -> Schedules:
    """The run's schedules on ``world_size`` processes: the lr is scaled for the GLOBAL batch
    (``cfg.batch``), so a global-batch preset gets the same lr on any number of GPUs."""
    return Schedules(
        optim=cfg.optim,
        teacher=cfg.teacher,
        curriculum=cfg.curriculum,
        epoch_length=cfg.iterations_per_epoch,
        total_steps=cfg.total_iterations,
        global_batch=cfg.batch(world_size).global_batch,
    )


def build_meta_arch(cfg: Config) -> SSLMetaArch:
    """Student and teacher in one ``SSLMetaArch``, seeded by ``train.seed``, with the step
    options of ``model.*`` applied (activation checkpointing, then compile)."""
    torch.manual_seed(cfg.train.seed)
    if cfg.distill.teacher:  # distillation: the same pair plus a frozen teacher (ssl/distill.py)
        from fastdino_cli.train.distill import build_distill_meta_arch

        model = build_distill_meta_arch(cfg)
    else:
        model = SSLMetaArch(
            model=cfg.model, dino=cfg.dino, ibot=cfg.ibot, centering=cfg.train.centering
        )
    return apply_step_options(
        model,
        compile=cfg.model.compile,
        activation_checkpointing=cfg.model.activation_checkpointing,
    )


def build_optimizer(
    student: torch.nn.Module, optim: OptimConfig, n_blocks: int, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the student's parameter groups (layer-wise decay, no decay on norms and
    biases, last layer apart); lr and weight decay are set per step by the schedules."""
    groups = build_param_groups(student, optim, n_blocks)
    return torch.optim.AdamW(
        groups,
        lr=0.0,
        betas=(optim.adamw_beta1, optim.adamw_beta2),
        fused=fused_adamw(optim.fused, device),
    )


def build_training(cfg: Config, *, accelerator=None, resume: Resume | None = None) -> TrainingStack:
    """The training stack of ``cfg`` (see the module docstring), from scratch or continuing
    ``resume``; ``accelerator`` defaults to ``build_accelerator()``."""
    accelerator = accelerator or build_accelerator()
    precision = build_precision(cfg.train.precision, accelerator.device)
    world, rank = accelerator.num_processes, accelerator.process_index
    model = build_meta_arch(cfg)
    sharded = dist_utils.fsdp_enabled(cfg.distributed, world)
    if sharded:  # before the optimizer: fully_shard replaces the parameters
        dist_utils.apply_fsdp(
            model, cfg.distributed, cfg.train.precision, device=accelerator.device
        )
    optimizer = build_optimizer(model.student, cfg.optim, model.n_blocks, accelerator.device)
    torch.manual_seed(seed_for(cfg.train.seed, rank, TRAINING_STREAM))
    if resume is not None:
        dist_utils.load_full_state(model, dict(resume.student), dict(resume.teacher))
        dist_utils.load_optimizer_state(model, optimizer, resume.state.optimizer)
        model.load_loss_state_dict(resume.state.loss)
        set_rng_state(resume.state.rng_for(rank, world))
    prepared = model
    if not sharded:
        model.to(accelerator.device)
        prepared, optimizer = accelerator.prepare(model, optimizer)
    if resume is not None and resume.state.scaler and precision.scaler is not None:
        precision.scaler.load_state_dict(resume.state.scaler)
    core = accelerator.unwrap_model(prepared)
    core.train()
    schedules = build_schedules(cfg, world_size=world)
    total = cfg.total_iterations
    step = TrainStep(
        accelerator=accelerator,
        model=prepared,
        optimizer=optimizer,
        precision=precision,
        schedules=schedules,
        clip_grad=cfg.optim.clip_grad,
        is_restart=lambda s: is_restart_step(cfg.curriculum, s, total),
    )
    return TrainingStack(
        accelerator, prepared, core, optimizer, schedules, step, sharded, precision
    )


def build_train_loader(
    cfg: Config, files: Sequence[Path], steps: StepRange, device: torch.device
) -> DataLoader:
    """The loader of ``steps`` of one rank over ``files``, from ``cfg``'s sections."""
    return build_loader(
        files,
        steps=steps,
        batch_size=cfg.batch(steps.world_size).per_device,
        seed=cfg.train.seed,
        data=cfg.data,
        crops=cfg.crops,
        curriculum=cfg.curriculum,
        ibot=cfg.ibot,
        patch_size=cfg.model.patch_size,
        device=device,
    )
