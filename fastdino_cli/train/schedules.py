"""Learning-rate, weight-decay, momentum and teacher-temperature schedules; parameter groups.

Every schedule is a pure function of the iteration. Within a schedule segment (see
``curriculum.py``) of ``L`` iterations, at local iteration ``t``::

    lr(t)       = peak * t / (W - 1)                              for t < W (warmup from 0)
                = min_lr + (peak - min_lr) * (1 + cos(pi * (t - W) / (L - W))) / 2   after
    peak        = base_lr * sqrt(global_batch / lr_scaling_batch)
    wd(t)       = cosine from weight_decay to weight_decay_end over L
    momentum(t) = cosine from teacher.momentum to teacher.final_momentum over L
    temp(t)     = linear from warmup_temp to temp over warmup_temp_epochs, then temp
    last-layer lr = 0 for t < freeze_last_layer_epochs, else lr(t)

A restart begins a new segment, so every schedule starts over there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastdino_cli.config import CurriculumConfig, OptimConfig, TeacherConfig
from fastdino_cli.curriculum import segment_at_step


def cosine(t: float, length: float, start: float, end: float) -> float:
    """Half-cosine from ``start`` (t=0) to ``end`` (t=length); clamped past the end."""
    if length <= 0:
        return end
    frac = min(max(t / length, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def warmup_cosine(t: float, length: float, warmup: float, peak: float, final: float) -> float:
    """Linear warmup from 0 over ``warmup`` iterations, then cosine to ``final`` by ``length``.

    The warmup is DINOv2's ``np.linspace(0, peak, W)``: it starts at 0 and reaches ``peak`` at
    its last iteration ``t = W - 1`` (a one-iteration warmup is just 0)."""
    if t < warmup:
        return peak * t / (warmup - 1) if warmup > 1 else 0.0
    return cosine(t - warmup, length - warmup, peak, final)


def linear_warmup_then_constant(t: float, warmup: float, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` iterations, then ``end``."""
    if t >= warmup or warmup <= 0:
        return end
    return start + (end - start) * t / warmup


def scaled_lr(base_lr: float, global_batch: int, lr_scaling_batch: int) -> float:
    """Square-root learning-rate scaling."""
    return base_lr * math.sqrt(global_batch / lr_scaling_batch)


@dataclass(frozen=True)
class ScheduleValues:
    """Every scheduled value at one iteration."""

    lr: float
    last_layer_lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    segment_step: int
    """Iteration within the current segment (0 right after a restart)."""


@dataclass(frozen=True)
class Schedules:
    """The run's schedules; ``at(step)`` is a pure function of the iteration."""

    optim: OptimConfig
    teacher: TeacherConfig
    curriculum: CurriculumConfig
    epoch_length: int
    total_steps: int
    global_batch: int

    def at(self, step: int) -> ScheduleValues:
        seg = segment_at_step(self.curriculum, step, self.total_steps, self.epoch_length)
        t = step - seg.start_step
        e = self.epoch_length
        warmup_epochs = self.optim.warmup_epochs if seg.warmup_epochs is None else seg.warmup_epochs
        peak = scaled_lr(self.optim.base_lr, self.global_batch, self.optim.lr_scaling_batch)
        lr = warmup_cosine(t, seg.length, round(warmup_epochs * e), peak, self.optim.min_lr)
        freeze = round(self.optim.freeze_last_layer_epochs * e)
        return ScheduleValues(
            lr=lr,
            last_layer_lr=0.0 if t < freeze else lr,
            weight_decay=cosine(
                t, seg.length, self.optim.weight_decay, self.optim.weight_decay_end
            ),
            momentum=cosine(t, seg.length, self.teacher.momentum, self.teacher.final_momentum),
            teacher_temp=linear_warmup_then_constant(
                t,
                round(self.teacher.warmup_temp_epochs * e),
                self.teacher.warmup_temp,
                self.teacher.temp,
            ),
            segment_step=t,
        )


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:(\d+)\.)?")
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "mask_token", "register_tokens")


def layer_id(name: str, n_blocks: int) -> int:
    """0 for embeddings and tokens, i + 1 for block i, n_blocks + 1 for the rest."""
    if any(k in name for k in _EMBED_NAMES):
        return 0
    m = _BLOCK_RE.search(name)
    if m:
        # chunked names (blocks.<chunk>.<i>.) carry the global index second
        return int(m.group(2) if m.group(2) is not None else m.group(1)) + 1
    return n_blocks + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms and LayerScale gammas get no weight decay (tokens do, as the reference).

    The prototype scale ``last_layer.weight_g`` keeps weight decay: the reference's rule
    (``.bias``, ``norm``, ``gamma`` in the name) does not match it. So does ``weight_v``."""
    return name.endswith(".bias") or "norm" in name or "gamma" in name or name.endswith(".ls")


def build_param_groups(
    model: nn.Module, optim: OptimConfig, n_blocks: int, prefix_backbone: str = "backbone."
) -> list[dict]:
    """AdamW groups fused by (lr_mult, wd_mult, is_last_layer) over trainable parameters.

    ``model`` is the student (``backbone``, ``dino_head``, ``ibot_head``); the layer-wise decay
    ``layerwise_decay ** (n_blocks + 1 - layer_id)`` applies to backbone parameters, the heads
    sit at layer ``n_blocks + 1`` (multiplier 1). Every parameter with ``last_layer`` in its
    name (a head's prototype direction ``weight_v`` AND its trainable scale ``weight_g``) is in
    an ``is_last_layer`` group: both stay frozen during ``optim.freeze_last_layer_epochs``, as
    in the reference. A scale frozen at 1 (``norm_last_layer``) is not trainable, so in no group.
    """
    fused: dict[tuple[float, float, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = name.startswith(prefix_backbone)
        lid = layer_id(name, n_blocks) if in_backbone else n_blocks + 1
        lr_mult = optim.layerwise_decay ** (n_blocks + 1 - lid)
        if in_backbone and "patch_embed" in name:
            lr_mult *= optim.patch_embed_lr_mult
        wd_mult = 0.0 if no_weight_decay(name, p) else 1.0
        last = "last_layer" in name  # weight_v and weight_g alike
        key = (lr_mult, wd_mult, last)
        group = fused.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_mult": lr_mult,
                "wd_mult": wd_mult,
                "is_last_layer": last,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return list(fused.values())


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    """Set every group's lr and weight decay from the scheduled values."""
    for g in optimizer.param_groups:
        base = values.last_layer_lr if g.get("is_last_layer") else values.lr
        g["lr"] = base * g.get("lr_mult", 1.0)
        g["weight_decay"] = values.weight_decay * g.get("wd_mult", 1.0)


def clip_grad_norms(modules: dict[str, nn.Module], max_norm: float | None) -> dict[str, Tensor]:
    """Clip each sub-module's gradients separately; returns each pre-clip total norm (0-d tensors
    on the gradients' device: reading them is a host-device sync, left to the logger)."""
    out = {}
    for name, mod in modules.items():
        params = [p for p in mod.parameters() if p.grad is not None]
        if not params:
            continue
        if max_norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        out[name] = norm.detach()
    return out
