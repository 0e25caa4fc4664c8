"""One training iteration of ``pretrain``, with no host-device synchronisation inside it.

Why: a GPU stays busy only while the Python that feeds it runs ahead. Every read of a device
value inside the step (``float(loss)``, ``if tensor:``, ``patches[bool_mask]``, a Python list
copied to the device) makes the host wait until the queue drains, and the next step then starts
on an idle GPU; with the 50-token crops of a low-resolution stage those gaps are a large share
of the step. Inside ``TrainStep.__call__`` therefore:

- the non-finite guard is decided on the device. The loss's finiteness (all-reduced MIN over
  ranks, so that all ranks skip together) becomes the ``found_inf`` flag of the fused AdamW
  kernel, which then leaves parameters, moments and step counts untouched; it also gates the
  EMA (``SSLMetaArch.update_teacher(apply=...)``) and puts the loss centres back as they were
  before the forward (``revert_loss_state``): a skipped step leaves no trace.
  With fp16 (``train/precision.py``) the grad scaler also skips steps whose LOSS is finite but
  whose scaled gradients overflowed (the loss scale is too high; it halves): the step is then
  not applied either (weights, AdamW moments, EMA and centres unchanged) but it is not a
  non-finite loss: it is reported as ``applied: false`` and does not count towards
  ``train.max_bad_steps`` (the first steps of an fp16 run normally overflow a few times while
  the scale settles).
- every scalar the loop reports (loss terms, gradient norms, the finite flag, whether any rank
  asked to stop) is stacked into ONE vector and copied to (pinned) host memory without waiting.
  ``PendingStep.resolve()`` waits for that copy alone, which the loop does one step later, once
  the next step is queued behind it.
- non-finite WEIGHTS: a finite loss can still produce an update that makes the weights inf or
  nan (``optim.base_lr=1e30``), and from then on every loss is NaN and every step skipped, so a
  short run would end "finished" with a NaN ``final.pt``. The step cannot be skipped any more
  once the optimizer applied it (telling would mean keeping a copy of every parameter), so the
  step reports ``weights_finite``, whether the student's parameters after it are finite
  (``weights_finite()``: one multi-tensor norm, a read of the parameters, small beside AdamW's
  reads and writes of parameters, gradients and moments). The loop settles every step before
  any checkpoint that includes it and stops the run when its weights are not finite
  (``train/settle.py::Settler``): no checkpoint or ``final.pt`` of non-finite weights is ever
  written, and the step queued behind the bad one sees a NaN loss and is skipped on the device
  as usual.

Only an optimizer that cannot skip on the device (AdamW without ``fused`` and without a grad
scaler: the CPU default, ``optim.fused=false`` on CUDA) reads the flag on the host before it
steps. On the CPU that read costs nothing: CPU ops have already run when Python sees them.

Per iteration::

    restart?   -> AdamW state cleared (a curriculum stage that restarts the schedules)
    schedules  -> lr / wd per group, teacher temperature, EMA momentum
    forward    -> loss, metrics (autocast);  flags = [finite, not stop] MIN over ranks
    backward (scaled with fp16), unscale, per-sub-module clipping, AdamW step (skipped on the
               device when not finite, or by the scaler when the gradients overflowed)
    centres put back and EMA of the teacher gated by the same "applied" flag; norm of the
               student's parameters
    one asynchronous copy of every scalar to the host  -> PendingStep
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fastdino_cli.data.masking import MultiCropBatch
from fastdino_cli.train import distributed as dist_utils
from fastdino_cli.train.precision import Precision
from fastdino_cli.train.schedules import (
    Schedules,
    ScheduleValues,
    apply_schedule,
    clip_grad_norms,
)

_FINITE, _GO, _WEIGHTS, _APPLIED = "finite", "_no_stop", "_weights_finite", "_applied"


@dataclass
class PendingStep:
    """A step that has been queued on the device; its scalars arrive on the host later."""

    step: int
    values: ScheduleValues
    keys: list[str]
    host: Tensor
    """(len(keys),) float32 on the CPU (pinned when copied from CUDA), filled asynchronously."""
    ready: Any = None
    """The CUDA event recorded after the copy (None: the copy is already complete)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Host-side values the caller attaches for the record (stage, crop sizes, data wait)."""

    def resolve(self) -> dict[str, Any]:
        """Wait for this step's scalars only; the record as plain Python values.

        ``finite``: the step was applied on every rank; ``stop_requested``: some rank asked to
        stop when the step was queued (SIGTERM), the same answer on every rank;
        ``weights_finite``: the student's weights after the step are finite on every rank;
        ``applied``: the update was applied (False on a non-finite loss, and with fp16 when the
        grad scaler skipped an overflow).
        """
        if self.ready is not None:
            self.ready.synchronize()
        scalars = dict(zip(self.keys, self.host.tolist(), strict=True))
        no_stop = scalars.pop(_GO)
        finite = scalars.pop(_FINITE) > 0
        weights = scalars.pop(_WEIGHTS) > 0
        applied = scalars.pop(_APPLIED, 1.0) > 0
        v = self.values
        return {
            "step": self.step,
            **self.info,
            "lr": v.lr,
            "last_layer_lr": v.last_layer_lr,
            "wd": v.weight_decay,
            "momentum": v.momentum,
            "teacher_temp": v.teacher_temp,
            **scalars,
            "finite": finite,
            "applied": finite and applied,
            "stop_requested": no_stop <= 0,
            "weights_finite": weights,
        }


def _full(t: Tensor) -> Tensor:
    # a sharded model's gradient norms are DTensors: materialise them (a collective that every
    # rank runs at the same point of the same step)
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def to_host_async(values: dict[str, Tensor], step: int, schedule: ScheduleValues) -> PendingStep:
    """Stack 0-d device tensors into one vector and start its copy to the host."""
    keys = list(values)
    vec = torch.stack([_full(values[k].detach()).reshape(()).float() for k in keys])
    if vec.device.type == "cuda":
        host = vec.to("cpu", non_blocking=True)  # pinned destination: a true asynchronous copy
        ready = torch.cuda.Event()
        ready.record()
        return PendingStep(step, schedule, keys, host, ready)
    return PendingStep(step, schedule, keys, vec.cpu())


def weights_finite(module: torch.nn.Module) -> Tensor:
    """1.0 when every parameter of ``module`` is finite on every rank, else 0.0 (0-d float32 on
    the parameters' device; no host synchronisation).

    The test is the finiteness of the norm of the parameters this rank holds (its FSDP shards,
    or whole tensors): one multi-tensor kernel; it also fails when the weights are so large
    (~1e19) that the norm overflows float32, and such weights overflow every activation: both
    are divergence. The MIN over ranks (one one-element all-reduce, queued like a kernel) gives
    every rank the same answer, so that all stop at the same step.
    """
    local = [p.to_local() if hasattr(p, "to_local") else p for p in module.parameters()]
    local = [t.detach() for t in local if t.numel()]
    if not local:
        return torch.ones(())
    norm = torch.nn.utils.get_total_norm(local)
    flag = torch.isfinite(norm).to(torch.float32).reshape(1)
    return dist_utils.min_over_ranks(flag)[0]


class TrainStep:
    """The per-iteration work of the loop on a prepared model and optimizer.

    Args:
        accelerator: the ``accelerate.Accelerator`` the model and optimizer were prepared with
            (device, backward).
        model: the prepared (or FSDP-sharded) ``SSLMetaArch``; its ``forward`` is called.
        optimizer: the prepared AdamW.
        precision: autocast dtype and the fp16 grad scaler (None: fp32).
        schedules: lr / wd / momentum / teacher temperature by iteration.
        clip_grad: per-sub-module gradient clipping norm (None: no clipping).
        is_restart: whether an iteration opens a schedule segment (AdamW state cleared).
    """

    def __init__(
        self,
        *,
        accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        precision: Precision | None = None,
        schedules: Schedules,
        clip_grad: float | None,
        is_restart: Callable[[int], bool],
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.core = accelerator.unwrap_model(model)
        self.optimizer = optimizer
        self.inner = getattr(optimizer, "optimizer", optimizer)
        self.schedules = schedules
        self.clip_grad = clip_grad
        self.is_restart = is_restart
        self.precision = precision or Precision("fp32", accelerator.device.type)
        self.scaler = self.precision.scaler
        scaler = self.scaler is not None
        fused = bool(getattr(self.inner, "_step_supports_amp_scaling", False))
        self.sets_found_inf = fused and not scaler
        """We hand the fused kernel the skip flag ourselves (with a scaler, the scaler does)."""
        self.skips_on_device = fused or scaler
        """False: the flag is read on the host before stepping (non-fused AdamW, no scaler)."""

    def __call__(self, batch: MultiCropBatch, *, stop_requested: bool = False) -> PendingStep:
        """Queue one iteration on ``batch``; see the module docstring."""
        step = batch.step
        if self.is_restart(step):
            self.inner.state.clear()
        values = self.schedules.at(step)
        apply_schedule(self.optimizer, values)
        batch = batch.to(self.accelerator.device)
        centres = self.core.loss_state_dict()  # the forward moves them; a skip puts them back
        with self.precision.autocast():
            loss, metrics = self.model(batch, teacher_temp=values.teacher_temp)
        loss_ = loss.detach()
        flags = torch.stack(
            [
                torch.isfinite(loss_).to(torch.float32),
                torch.full((), 0.0 if stop_requested else 1.0, device=loss_.device),
            ]
        )
        flags = dist_utils.min_over_ranks(flags)  # every rank skips / stops at the same step
        metrics = dist_utils.mean_over_ranks(metrics)  # global-batch values
        finite = flags[0] > 0
        applied = finite
        apply = self.skips_on_device or bool(finite)  # host read only where it is free
        norms: dict[str, Tensor] = {}
        if apply:
            scaler = self.scaler
            self.accelerator.backward(scaler.scale(loss) if scaler is not None else loss)
            if scaler is not None:
                scaler.unscale_(self.inner)
            norms = clip_grad_norms(dict(self.core.student.items()), self.clip_grad)
            if scaler is not None:  # the scaler skips an overflow: so do the EMA and centres
                applied = finite & torch.isfinite(sum(norms.values(), torch.zeros(())))
            self._optimizer_step(finite)
        self.core.revert_loss_state(centres, where=~applied)
        self.optimizer.zero_grad(set_to_none=True)  # before the EMA: its temporaries reuse it
        if apply:
            self.core.update_teacher(
                values.momentum, apply=applied if self.skips_on_device else None
            )
        scalars = {
            **metrics,
            **{f"grad_norm_{k}": v for k, v in norms.items()},
            **self._scaler_scalars(applied),
            _WEIGHTS: weights_finite(self.core.student),
            _FINITE: flags[0],
            _GO: flags[1],
        }
        return to_host_async(scalars, step, values)

    def _scaler_scalars(self, applied: Tensor) -> dict[str, Tensor]:
        """With fp16: whether the scaler applied the step, and the loss scale it will use next
        (the scale is a device tensor inside the scaler: read with the other scalars)."""
        if self.scaler is None:
            return {}
        scale = getattr(self.scaler, "_scale", None)
        if scale is None:
            scale = torch.full((), self.scaler.get_scale())
        return {_APPLIED: applied.to(torch.float32), "loss_scale": scale}

    def _optimizer_step(self, finite: Tensor) -> None:
        if self.scaler is not None:  # skips on found_inf (fused: on the device), then rescales
            self.scaler.step(self.inner)
            self.scaler.update()
            return
        if not self.sets_found_inf:
            self.optimizer.step()
            return
        # the fused kernel reads ``found_inf`` (as GradScaler sets it): 1 leaves every
        # parameter, moment and step count as it was
        self.inner.found_inf = (~finite).to(torch.float32)
        try:
            self.optimizer.step()
        finally:
            del self.inner.found_inf
