"""Peak memory of a training step per device, estimated before any GPU is rented.

Why: the first thing a rented 8-GPU node says about a preset is often "CUDA out of memory", after
the data has been staged and the job queued. ``pretrain --plan`` states the peak per device
(``--gpu-mem 80``: and whether the per-device batch fits an 80 GiB card) from the config alone.

The estimate, per device (``world`` processes; FSDP2 shards by ``world`` when
``distributed.fsdp`` and ``world > 1``, DDP replicates)::

    parameters    student + teacher, fp32 master weights                       4 B x 2P / shards
    gradients     student                                                      4 B x P  / shards
    AdamW         exp_avg + exp_avg_sq of the student                          8 B x P  / shards
    cast copies   autocast's cached low-precision copies of the student's weights (2 B x P;
                  unsharded); with FSDP2 mixed precision instead the gathered units (the two
                  largest units in ``param_dtype``: the one computing and the one prefetched)
    activations   what autograd saves in the student's forward for the backward, per image:
                  2 global + n local crops through the backbone, the DINO head on every crop's
                  CLS, the iBOT head on the expected masked patches, the losses (their fp32
                  log-softmax rows over K prototypes) and the teacher's targets; times the
                  per-device batch; plus the backward's working set (the gradients flowing
                  through one block for the whole batch)

    peak          max(model state + activations, model state + AdamW's step temporaries)

The activations are COUNTED FROM THE MODEL, as the FLOPs are (``train/flops.py``): the backbone,
the heads and the losses are built on the ``meta`` device (no memory) and run on one image while
``torch.autograd.graph.saved_tensors_hooks`` records every tensor kept for the backward
(parameters excluded, views counted once by their base). The meta device computes attention the
"math" way and would keep the (heads x N x N) attention matrix; the training kernels (flash /
memory-efficient on GPU, the CPU flash kernel) keep a (heads x N) log-sum-exp instead, which is
what is counted. With mixed precision the backbone's and the head MLPs' saved tensors are 2 bytes
(the fp32 islands after the heads' normalisation, the losses and the targets stay 4 bytes).
With activation checkpointing (``model.activation_checkpointing``) the student keeps each
block's input only, and recomputes one block at a time in the backward (that block's saved
tensors come back for the peak).

Not counted: the teacher's forward working set (no autograd, one block at a time), the data
batch, gradients of the logits while the backward runs, CUDA context (~0.5-1 GiB), kernel
workspaces and allocator fragmentation: ``fits`` keeps ``HEADROOM`` of the budget free for them.
The estimate is checked against measured CPU peaks by ``benchmarks/memory_plan.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fastdino_cli.config import Config
from fastdino_cli.curriculum import resolve_stages
from fastdino_cli.errors import ConfigError
from fastdino_cli.train.flops import N_GLOBAL_CROPS, masked_patches_per_image

GIB = 2**30
HEADROOM = 0.10
"""Share of the memory budget kept free for what the estimate does not count."""


@dataclass(frozen=True)
class StageMemory:
    """Peak per device in one curriculum stage (GiB)."""

    name: str
    global_crops_size: int
    local_crops_size: int
    activations_gib: float
    activations_checkpointed_gib: float
    block_gib: float
    """One block's saved tensors for the whole batch: the backward's working set, counted in
    both activation figures (and once more, recomputed, in the checkpointed one)."""
    peak_gib: float
    """Without activation checkpointing."""
    peak_checkpointed_gib: float
    """With ``model.activation_checkpointing=true``."""
    fits: bool | None = None
    """The run's own setting fits the budget (None: no budget given)."""
    fits_checkpointed: bool | None = None


@dataclass(frozen=True)
class MemoryPlan:
    """The estimated peak memory per device of a config on ``world`` devices."""

    world: int
    sharded: bool
    precision: str
    batch_size_per_gpu: int
    activation_checkpointing: bool
    parameters_gib: float
    gradients_gib: float
    adamw_gib: float
    cast_copies_gib: float
    stages: list[StageMemory]
    budget_gib: float | None = None

    @property
    def static_gib(self) -> float:
        return self.parameters_gib + self.gradients_gib + self.adamw_gib + self.cast_copies_gib

    @property
    def peak_gib(self) -> float:
        """The run's peak (its own checkpointing setting), over its stages."""
        key = "peak_checkpointed_gib" if self.activation_checkpointing else "peak_gib"
        return max(getattr(s, key) for s in self.stages)

    @property
    def fits(self) -> bool | None:
        if self.budget_gib is None:
            return None
        return all(s.fits for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {"static_gib": self.static_gib, "peak_gib": self.peak_gib, "fits": self.fits}
        return out


# --------------------------------------------------------------------------------------------
# Counting saved tensors on the meta device
# --------------------------------------------------------------------------------------------


class _SavedTensors:
    """Bytes autograd keeps for the backward while ``run()`` executes (fp32 on meta)."""

    def __init__(self, params: nn.Module, attention_tokens: int | None = None) -> None:
        self.params = {id(p) for p in params.parameters()}
        self.n = attention_tokens
        self.kept: dict[int, torch.Tensor] = {}
        self.lse = 0

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) in self.params or id(base) in self.params:
            return t
        if self.n is not None and t.dim() >= 3 and tuple(t.shape[-2:]) == (self.n, self.n):
            # the math kernel's attention matrix: a training kernel keeps a log-sum-exp row
            if id(base) not in self.kept:
                self.lse += t.numel() // self.n * 4
            self.kept[id(base)] = torch.empty(0)
            return t
        self.kept.setdefault(id(base), base)
        return t

    def count(self, run: Callable[[], Any]) -> int:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            run()
        return sum(b.numel() * b.element_size() for b in self.kept.values()) + self.lse


@dataclass(frozen=True)
class BackboneSaved:
    """Saved bytes (fp32) of the backbone on ONE crop of one size."""

    total: int
    block_inputs: int
    """The inputs of every block (what activation checkpointing keeps)."""
    largest_block: int
    """One block's own saved tensors (recomputed one at a time with checkpointing)."""
    outside_blocks: int
    """Patch embedding, tokens and final norm: kept with checkpointing too."""


@functools.lru_cache(maxsize=32)
def _backbone_saved(model_json: str, size: int) -> BackboneSaved:
    from fastdino_cli.config import ModelConfig
    from fastdino_cli.model.block import cat_groups, group_shapes
    from fastdino_cli.model.vit import build_vit

    cfg = ModelConfig.model_validate_json(model_json)
    vit = build_vit(cfg.model_copy(update={"attention": "sdpa"}), device="meta").train()
    x = torch.empty(1, 3, size, size, device="meta")
    tokens = vit.prepare_tokens(x)
    n = tokens.shape[1]
    counts: list[int] = []

    def run() -> None:
        t = vit.prepare_tokens(x)
        vit._set_backend(t.device, 1)
        shapes = group_shapes([t])
        h = cat_groups([t])
        for blk in vit.blocks:
            before = sum(b.numel() * b.element_size() for b in saved.kept.values())
            h = blk.forward_packed(h, shapes)
            after = sum(b.numel() * b.element_size() for b in saved.kept.values())
            counts.append(after - before + 0)
        vit.norm(h)

    saved = _SavedTensors(vit, attention_tokens=n)
    total = saved.count(run)
    block_input = tokens.numel() * 4
    per_block = [c + saved.lse // max(1, len(vit.blocks)) for c in counts]
    return BackboneSaved(
        total,
        block_input * len(vit.blocks),
        max(per_block, default=0),
        max(0, total - sum(per_block)),
    )


@functools.lru_cache(maxsize=32)
def _head_saved(in_dim: int, head_json: str) -> tuple[int, int, int]:
    """Saved bytes (fp32) of a head: (MLP per row, normalisation + prototypes per row, per
    call). The per-call part is the fp32 prototype matrix computed from the weight-normed
    parameters (K x bottleneck), kept once per forward of the head whatever its rows."""
    from fastdino_cli.config import HeadConfig
    from fastdino_cli.model.heads import build_head

    with torch.device("meta"):
        head = build_head(in_dim, HeadConfig.model_validate_json(head_json))
        x1 = torch.empty(1, in_dim, requires_grad=True)
        x2 = torch.empty(2, in_dim, requires_grad=True)
    mlp = _SavedTensors(head).count(lambda: head.mlp(x2)) - _SavedTensors(head).count(
        lambda: head.mlp(x1)
    )
    one, two = (_SavedTensors(head).count(lambda x=x: head(x)) for x in (x1, x2))
    per_row = two - one
    return mlp, per_row - mlp, one - per_row


def _loss_saved(cfg: Config, n_local: int, masked: float) -> int:
    """Saved bytes (fp32) of the DINO and iBOT losses of one image, with its teacher targets."""
    from fastdino_cli.ssl.losses import DinoClsLoss, IbotPatchLoss

    k = cfg.dino.head.n_prototypes
    k_ibot = cfg.ibot.head.n_prototypes if cfg.ibot.separate_head else k
    with torch.device("meta"):
        dino = DinoClsLoss(k, student_temp=cfg.dino.student_temp)
        s_global = torch.empty(N_GLOBAL_CROPS, k, requires_grad=True)
        s_local = torch.empty(n_local, k, requires_grad=True) if n_local else None
        targets = torch.empty(N_GLOBAL_CROPS, k)
        ibot = IbotPatchLoss(k_ibot, student_temp=cfg.dino.student_temp)
        s_patch = torch.empty(1, k_ibot, requires_grad=True)
        t_patch = torch.empty(1, k_ibot)
        w = torch.empty(1)
    b_dino = _SavedTensors(dino).count(lambda: dino(s_global, s_local, targets))
    b_ibot = _SavedTensors(ibot).count(lambda: ibot(s_patch, t_patch, w, 2))
    return int(b_dino + masked * b_ibot)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


def _param_counts(cfg: Config) -> tuple[int, int, int]:
    """(student parameters, trainable student parameters, largest FSDP unit) on meta."""
    from fastdino_cli.ssl.meta import SSLMetaArch

    with torch.device("meta"):
        model = SSLMetaArch(
            model=cfg.model, dino=cfg.dino, ibot=cfg.ibot, centering=cfg.train.centering
        )
    student = model.student
    total = sum(p.numel() for p in student.parameters())
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    units = [sum(p.numel() for p in b.parameters()) for b in student["backbone"].blocks]
    units += [sum(p.numel() for p in student[k].parameters()) for k in student if k != "backbone"]
    return total, trainable, max(units)


def _precision_for_plan(precision: str) -> str:
    """The plan is of a GPU run: ``auto`` is bf16 there (fp16 on GPUs without bf16: the same
    sizes)."""
    return "bf16" if precision == "auto" else precision


def plan_memory(cfg: Config, world: int = 1, budget_gib: float | None = None) -> MemoryPlan:
    """The estimated peak memory per device of ``cfg`` on ``world`` devices (see the module
    docstring); with ``budget_gib``, whether each stage fits."""
    if world < 1:
        raise ConfigError(f"--gpus must be at least 1, got {world}")
    if budget_gib is not None and budget_gib <= 0:
        raise ConfigError(f"--gpu-mem must be a positive number of GiB, got {budget_gib}")
    precision = _precision_for_plan(cfg.train.precision)
    low = precision in ("bf16", "fp16")
    act_bytes = 2 if low else 4
    sharded = world > 1 and cfg.distributed.fsdp
    shards = world if sharded else 1
    p_student, p_train, p_unit = _param_counts(cfg)
    params = 4 * 2 * p_student / shards
    grads = 4 * p_train / shards
    adamw = 8 * p_train / shards
    param_dtype = cfg.distributed.param_dtype
    gathered_low = sharded and (param_dtype in ("bf16", "fp16") or (param_dtype == "auto" and low))
    if sharded:
        cast = 2 * p_unit * (2 if gathered_low else 4)  # the gathered units
    else:
        cast = 2 * p_student if low else 0.0
    model_json = cfg.model.model_copy(
        update={"drop_path_rate": 0.0, "compile": False, "activation_checkpointing": False}
    ).model_dump_json()
    dim = _backbone_dim(cfg)
    dino_mlp, dino_fp32, dino_call = _head_saved(dim, cfg.dino.head.model_dump_json())
    ibot_head = cfg.ibot.head if cfg.ibot.separate_head else cfg.dino.head
    ibot_mlp, ibot_fp32, ibot_call = _head_saved(dim, ibot_head.model_dump_json())
    head_calls = dino_call + ibot_call  # one student forward of each head per step
    n_local = cfg.crops.local_crops_number
    batch = cfg.batch(world).per_device
    stages = []
    static = params + grads + adamw + cast
    # AdamW's step, activations freed: the multi-tensor kernel's sqrt(exp_avg_sq) temporaries
    optimizer_step = static + 4 * p_train / shards
    for st in resolve_stages(cfg.curriculum, cfg.crops):
        g = _backbone_saved(model_json, st.global_crops_size)
        loc = _backbone_saved(model_json, st.local_crops_size) if n_local else None
        masked = masked_patches_per_image(cfg.ibot, cfg.model.patch_size, st.global_crops_size)
        rows = N_GLOBAL_CROPS + n_local
        heads_low = rows * dino_mlp + masked * ibot_mlp
        heads_fp32 = rows * dino_fp32 + masked * ibot_fp32
        fixed = heads_low * act_bytes / 4 + heads_fp32 + _loss_saved(cfg, n_local, masked)
        full = N_GLOBAL_CROPS * g.total + (n_local * loc.total if loc else 0)
        kept = N_GLOBAL_CROPS * (g.block_inputs + g.outside_blocks) + (
            n_local * (loc.block_inputs + loc.outside_blocks) if loc else 0
        )
        # one block recomputed at a time, for the whole batch of crops
        redo = N_GLOBAL_CROPS * g.largest_block + (n_local * loc.largest_block if loc else 0)
        scale = act_bytes / 4
        # the backward's working set: the gradients flowing through one block for the batch
        act = batch * ((full + redo) * scale + fixed) + head_calls
        act_ckpt = batch * ((kept + 2 * redo) * scale + fixed) + head_calls
        peak = max(static + act, optimizer_step) / GIB
        peak_ckpt = max(static + act_ckpt, optimizer_step) / GIB
        limit = None if budget_gib is None else budget_gib * (1 - HEADROOM)
        own = peak_ckpt if cfg.model.activation_checkpointing else peak
        stages.append(
            StageMemory(
                name=st.name,
                global_crops_size=st.global_crops_size,
                local_crops_size=st.local_crops_size,
                activations_gib=act / GIB,
                activations_checkpointed_gib=act_ckpt / GIB,
                block_gib=batch * redo * scale / GIB,
                peak_gib=peak,
                peak_checkpointed_gib=peak_ckpt,
                fits=None if limit is None else own <= limit,
                fits_checkpointed=None if limit is None else peak_ckpt <= limit,
            )
        )
    return MemoryPlan(
        world=world,
        sharded=sharded,
        precision=precision,
        batch_size_per_gpu=batch,
        activation_checkpointing=cfg.model.activation_checkpointing,
        parameters_gib=params / GIB,
        gradients_gib=grads / GIB,
        adamw_gib=adamw / GIB,
        cast_copies_gib=cast / GIB,
        stages=stages,
        budget_gib=budget_gib,
    )


def _backbone_dim(cfg: Config) -> int:
    from fastdino_cli.model.vit import build_vit

    return build_vit(cfg.model, device="meta").embed_dim


def largest_fitting_batch(cfg: Config, world: int, budget_gib: float) -> int:
    """The largest per-device batch whose estimated peak (the run's own checkpointing setting)
    fits ``budget_gib`` less the headroom; 0 when not even one image fits."""

    def fits(n: int) -> bool:
        train = cfg.train.model_copy(update={"batch_size_per_gpu": n, "global_batch": None})
        return bool(plan_memory(cfg.model_copy(update={"train": train}), world, budget_gib).fits)

    lo, hi = 0, 1
    while fits(hi) and hi < 2**16:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_memory(plan: MemoryPlan, cfg: Config | None = None) -> str:
    """The memory section of ``--plan`` as text."""
    how = (
        f"FSDP2 over {plan.world}"
        if plan.sharded
        else ("replicated (DDP)" if plan.world > 1 else "1 device")
    )
    lines = [
        f"memory per device (estimate; {plan.precision}, {plan.batch_size_per_gpu} images/GPU, "
        f"{how}):",
        f"  parameters {plan.parameters_gib:.2f} GiB, gradients {plan.gradients_gib:.2f}, "
        f"AdamW {plan.adamw_gib:.2f}, cast / gathered copies {plan.cast_copies_gib:.2f}",
        f"  {'stage':<18}{'crops (px)':<12}{'activations':>12}{'peak':>9}"
        f"{'act. ckpt':>11}{'peak ckpt':>11}",
    ]
    for s in plan.stages:
        crops = f"{s.global_crops_size}+{s.local_crops_size}"
        lines.append(
            f"  {s.name:<18}{crops:<12}{s.activations_gib:>11.2f}G{s.peak_gib:>8.2f}G"
            f"{s.activations_checkpointed_gib:>10.2f}G{s.peak_checkpointed_gib:>10.2f}G"
        )
    ckpt = "on" if plan.activation_checkpointing else "off"
    lines.append(
        f"  peak with this config (activation checkpointing {ckpt}): {plan.peak_gib:.2f} GiB"
    )
    if plan.budget_gib is not None:
        limit = plan.budget_gib * (1 - HEADROOM)
        if plan.fits:
            lines.append(
                f"  fits {plan.budget_gib:g} GiB (peak {plan.peak_gib:.2f} <= {limit:.1f} GiB, "
                f"{HEADROOM:.0%} kept free)"
            )
        else:
            advice = []
            if cfg is not None:
                n = largest_fitting_batch(cfg, plan.world, plan.budget_gib)
                if not n:
                    advice.append("more GPUs")
                elif cfg.train.global_batch is not None:
                    advice.append(f"train.global_batch <= {n * plan.world} ({n} per GPU)")
                else:
                    advice.append(f"train.batch_size_per_gpu <= {n}")
            if not plan.activation_checkpointing and all(s.fits_checkpointed for s in plan.stages):
                advice.append("model.activation_checkpointing=true")
            lines.append(
                f"  DOES NOT FIT {plan.budget_gib:g} GiB: peak {plan.peak_gib:.2f} GiB > "
                f"{limit:.1f} GiB ({HEADROOM:.0%} kept free); try "
                + (" or ".join(advice) if advice else "a smaller model")
            )
    return "\n".join(lines)
