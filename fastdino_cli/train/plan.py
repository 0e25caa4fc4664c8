"""The plan of a pretraining run: what each curriculum stage costs per image and in total.

Why: FastDINOv2's claim is a compute claim. ``plan_run`` (``fastdino pretrain --plan``) states,
before any GPU time is spent, what a preset will cost and how it compares with another preset:
the steps, crops and tokens of each stage (``curriculum``) times the FLOPs of one training image
(``train/flops.py``, which states the counting convention). Like the loop, a plan is of a whole
resolved ``Config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fastdino_cli.config import Config, paper_departures
from fastdino_cli.curriculum import resolve_stages, stage_starts
from fastdino_cli.errors import ConfigError
from fastdino_cli.train.flops import (
    N_GLOBAL_CROPS,
    ImageCost,
    config_image_cost,
    masked_patches_per_image,
    tokens_per_crop,
)
from fastdino_cli.train.schedules import scaled_lr

# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePlan:
    """One curriculum stage: its share of the run and what one image costs in it."""

    index: int
    name: str
    steps: int
    global_crops_size: int
    local_crops_size: int
    global_crops: int
    local_crops: int
    tokens_per_image: int
    masked_patches_per_image: float
    gflops_per_image: float
    cost: ImageCost
    images: int
    pflops: float


@dataclass(frozen=True)
class RunPlan:
    """Every stage of one resolved config, and the run's totals."""

    preset: str | None
    arch: str
    patch_size: int
    gpus: int
    batch_size_per_gpu: int
    """Per-device batch: the global batch over ``gpus`` (or the config's per-GPU batch)."""
    global_batch: int
    total_steps: int
    stages: list[StagePlan]
    images: int
    pflops: float
    iterations_per_epoch: int
    epoch_images: int
    """Images of one "epoch" (its iterations x the global batch)."""
    epochs: float
    """Epochs the planned steps make (``optim.epochs`` unless ``train.max_steps`` cuts)."""
    peak_lr: float
    """Peak learning rate, scaled for the global batch."""
    paper: str | None
    """The paper recipe the config states (``paper.recipe``), if any."""
    departures: list[str]
    """Where the run departs from that recipe (``config.paper_departures``)."""
    gflops_per_image: float
    """Average over the run (total FLOPs / images trained)."""
    tokens_per_image: float
    """Average over the run."""


@dataclass(frozen=True)
class Plan:
    """A run's plan, optionally next to a compared one, with the ratios compared / planned."""

    run: RunPlan
    compare: RunPlan | None = None
    ratio_per_image: float | None = None
    """Compared GFLOPs per image / planned GFLOPs per image (= the ratio at equal images)."""
    ratio_total: float | None = None
    """Compared run's total FLOPs / planned run's total FLOPs (each at its own length)."""
    convention: str = field(
        default=(
            "FLOPs = 2 x multiply-accumulates of matmuls, convolutions and attention, counted "
            "by torch FlopCounterMode on a meta-device model; per training image: student "
            "forward+backward (3x forward) on all crops and teacher forward on the 2 global "
            "crops, DINO head on CLS tokens, iBOT head on the expected masked patches; "
            "stochastic depth ignored"
        )
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        out = asdict(self)
        for run in (out["run"], out["compare"]):
            for st in (run or {}).get("stages", []):
                st["cost"]["total"] = st["gflops_per_image"]
        return out


def plan_config(cfg: Config, gpus: int = 1) -> RunPlan:
    """Steps, crop sizes, tokens and FLOPs of every stage of ``cfg`` on ``gpus`` devices.

    Stage boundaries are those the loop uses (``curriculum.stage_starts``); ``train.max_steps``
    cuts the run short as it would in training.
    """
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    total = cfg.total_iterations
    run_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    starts = stage_starts(cfg.curriculum, total)
    ends = starts[1:] + [total]
    batch_of = cfg.batch(gpus)  # ConfigError when the global batch does not divide over gpus
    batch = batch_of.global_batch
    n_local = cfg.crops.local_crops_number
    r = cfg.model.num_register_tokens
    stages = []
    for st, a, b in zip(resolve_stages(cfg.curriculum, cfg.crops), starts, ends, strict=True):
        steps = max(0, min(b, run_steps) - min(a, run_steps))
        cost = config_image_cost(cfg, st.global_crops_size, st.local_crops_size)
        images = steps * batch
        stages.append(
            StagePlan(
                index=st.index,
                name=st.name,
                steps=steps,
                global_crops_size=st.global_crops_size,
                local_crops_size=st.local_crops_size,
                global_crops=N_GLOBAL_CROPS,
                local_crops=n_local,
                tokens_per_image=N_GLOBAL_CROPS
                * tokens_per_crop(st.global_crops_size, cfg.model.patch_size, r)
                + n_local * tokens_per_crop(st.local_crops_size, cfg.model.patch_size, r),
                masked_patches_per_image=masked_patches_per_image(
                    cfg.ibot, cfg.model.patch_size, st.global_crops_size
                ),
                gflops_per_image=cost.total,
                cost=cost,
                images=images,
                pflops=cost.total * images * 1e-6,
            )
        )
    images = sum(s.images for s in stages)
    pflops = sum(s.pflops for s in stages)
    return RunPlan(
        preset=cfg.preset,
        arch=cfg.model.arch,
        patch_size=cfg.model.patch_size,
        gpus=gpus,
        batch_size_per_gpu=batch_of.per_device,
        global_batch=batch,
        total_steps=run_steps,
        stages=stages,
        images=images,
        pflops=pflops,
        gflops_per_image=pflops * 1e6 / images if images else 0.0,
        tokens_per_image=(sum(s.tokens_per_image * s.images for s in stages) / images)
        if images
        else 0.0,
        iterations_per_epoch=cfg.iterations_per_epoch,
        epoch_images=cfg.iterations_per_epoch * batch,
        epochs=run_steps / cfg.iterations_per_epoch,
        peak_lr=scaled_lr(cfg.optim.base_lr, batch, cfg.optim.lr_scaling_batch),
        paper=cfg.paper.recipe if cfg.paper else None,
        departures=paper_departures(cfg, gpus),
    )


def plan_run(cfg: Config, compare_cfg: Config | None = None, gpus: int = 1) -> Plan:
    """The plan of ``cfg`` and, with ``compare_cfg``, the ratios compared / planned."""
    run = plan_config(cfg, gpus)
    if compare_cfg is None:
        return Plan(run=run)
    other = plan_config(compare_cfg, gpus)
    return Plan(
        run=run,
        compare=other,
        ratio_per_image=other.gflops_per_image / run.gflops_per_image,
        ratio_total=other.pflops / run.pflops,
    )


# --------------------------------------------------------------------------------------------
# Rendering (plain text, for the CLI)
# --------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _run_table(run: RunPlan) -> list[str]:
    head = (
        f"{run.preset or '(config)'}: {run.arch}/{run.patch_size}, {run.total_steps} steps x "
        f"{run.global_batch} images ({run.batch_size_per_gpu}/GPU x {run.gpus} GPU), peak lr "
        f"{run.peak_lr:.3g}"
    )
    epochs = (
        f"{run.images:,} images = {run.epochs:g} epochs of {run.epoch_images:,} images "
        f"({run.iterations_per_epoch} steps each)"
    )
    cols = f"{'stage':<18}{'steps':>9}  {'crops (px)':<14}{'tokens/img':>11}"
    cols += f"{'GFLOPs/img':>12}{'PFLOPs':>12}"
    lines = [head, epochs, *_paper_lines(run), cols]
    for s in run.stages:
        crops = f"{s.global_crops}x{s.global_crops_size}+{s.local_crops}x{s.local_crops_size}"
        lines.append(
            f"{s.name:<18}{s.steps:>9}  {crops:<14}{s.tokens_per_image:>11}"
            f"{s.gflops_per_image:>12.2f}{_num(s.pflops):>12}"
        )
    lines.append(
        f"{'total':<18}{run.total_steps:>9}  {'':<14}{run.tokens_per_image:>11.1f}"
        f"{run.gflops_per_image:>12.2f}{_num(run.pflops):>12}"
    )
    return lines


def _paper_lines(run: RunPlan) -> list[str]:
    if run.paper is None:
        return []
    if not run.departures:
        return [f"the paper's recipe: {run.paper}"]
    return [f"DEPARTS from the paper's recipe ({run.paper}):"] + [
        f"  - {d}" for d in run.departures
    ]


def render_plan(plan: Plan) -> str:
    """The ``--plan`` table(s) and ratios as text."""
    lines = _run_table(plan.run)
    if plan.compare is not None:
        lines += [""] + _run_table(plan.compare) + [""]
        a, b = plan.run.preset or "planned", plan.compare.preset or "compared"
        lines.append(
            f"ratio {b} / {a}: {plan.ratio_per_image:.3f}x GFLOPs per image (at equal images), "
            f"{plan.ratio_total:.3f}x total FLOPs (each at its own length)"
        )
    lines.append(
        "counting: 1 MAC = 2 FLOPs; student fwd+bwd = 3x fwd on all crops, teacher fwd on "
        "2 global crops, heads included; totals are for the global batch shown"
    )
    return "\n".join(lines)
