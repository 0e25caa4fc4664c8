"""FLOPs accounting of a pretraining run: what each curriculum stage costs per image and in total.

Why: FastDINOv2's claim is a compute claim (2.25x fewer FLOPs per training image for ViT-B/16 on
ImageNet-1K). ``plan_run`` states, before any GPU time is spent, what a preset will cost and how
it compares with another preset, counted from the model that would actually train.

Counting convention (one FLOP = one multiply or one add, so a multiply-accumulate is 2 FLOPs):

- Only matrix products are counted: linear layers, the patch-embedding convolution and the two
  attention products (``q k^T`` and ``attn v``). Norms, activations, softmax, residual adds,
  position-embedding interpolation and the losses are not (they are < 1% for these shapes). This
  is what ``torch.utils.flop_counter.FlopCounterMode`` counts.
- Per training image (one image of the batch = 2 global + ``local_crops_number`` local crops):
    student   3 x forward (forward + backward, backward = 2 x forward) of the backbone on every
              crop, the DINO head on every crop's CLS token and the iBOT head on the masked
              patches of the global crops;
    teacher   1 x forward of the backbone on the 2 global crops, the DINO head on their CLS
              tokens and the iBOT head on the same masked positions.
  Masked patches per image = 2 x ``ibot.mask_sample_probability`` x mean(``mask_ratio_min_max``)
  x patches per global crop (the expectation of the stratified masking).
- Stochastic depth is ignored: the student is counted as if every block ran on every sample
  (DINOv2's efficient drop path skips ``drop_path_rate`` of each residual branch in practice).

The forward costs are counted FROM THE MODEL: ``build_vit`` and ``build_head`` on the ``meta``
device (no memory, so ViT-g costs the same as ViT-S), one image per crop size through
``forward_features`` under ``FlopCounterMode``, and one token through each head.
``analytic_backbone_flops`` / ``analytic_head_flops`` give the same numbers from the layer shapes
and serve as an independent cross-check in the tests.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastdino_cli.config import Config, HeadConfig, ModelConfig
from fastdino_cli.curriculum import resolve_stages, stage_starts
from fastdino_cli.errors import ConfigError

BACKWARD_FACTOR = 2.0
"""Backward costs twice the forward (gradients of inputs and of weights); student = 3x."""
N_GLOBAL_CROPS = 2


# --------------------------------------------------------------------------------------------
# Counted from the model (meta device)
# --------------------------------------------------------------------------------------------


def _model_key(model: ModelConfig) -> str:
    # Neither drop path (switched off for counting) nor the learnable position grid (its
    # interpolation is not a matrix product) changes the count: presets differing only there
    # share one cached count.
    update = {"drop_path_rate": 0.0, "compile": False, "img_size": model.patch_size}
    return model.model_copy(update=update).model_dump_json()


@functools.lru_cache(maxsize=64)
def _counted_backbone(model_json: str, size: int) -> int:
    from fastdino_cli.model.vit import build_vit

    cfg = ModelConfig.model_validate_json(model_json)
    vit = build_vit(cfg.model_copy(update={"attention": "sdpa"}), device="meta").eval()
    x = torch.empty(1, 3, size, size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vit.forward_features(x)
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=64)
def _counted_head(in_dim: int, head_json: str) -> int:
    from fastdino_cli.model.heads import build_head

    with torch.device("meta"):
        head = build_head(in_dim, HeadConfig.model_validate_json(head_json))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(torch.empty(1, in_dim, device="meta"))
    return int(counter.get_total_flops())


def counted_backbone_flops(model: ModelConfig, size: int) -> int:
    """Forward FLOPs of the backbone on ONE ``size x size`` image, counted by FlopCounterMode."""
    if size < model.patch_size:
        raise ConfigError(f"crop size {size} is smaller than model.patch_size={model.patch_size}")
    return _counted_backbone(_model_key(model), size)


def counted_head_flops(in_dim: int, head: HeadConfig) -> int:
    """Forward FLOPs of a projection head on ONE token, counted by FlopCounterMode."""
    return _counted_head(in_dim, head.model_dump_json())


# --------------------------------------------------------------------------------------------
# Analytic formula (independent cross-check)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VitDims:
    """The shapes that determine a ViT's FLOPs."""

    embed_dim: int
    depth: int
    patch_size: int
    ffn: str
    ffn_hidden: int
    num_register_tokens: int = 0

    @classmethod
    def from_config(cls, model: ModelConfig) -> VitDims:
        from fastdino_cli.model.vit import ARCHS, ffn_hidden_dim

        base = ARCHS[model.arch]
        dim = model.embed_dim or base["embed_dim"]
        ffn = model.ffn or base["ffn"]
        return cls(
            embed_dim=dim,
            depth=model.depth or base["depth"],
            patch_size=model.patch_size,
            ffn=ffn,
            ffn_hidden=ffn_hidden_dim(dim, model.mlp_ratio, ffn),
            num_register_tokens=model.num_register_tokens,
        )


def analytic_backbone_flops(dims: VitDims, size: int) -> int:
    """Forward FLOPs of one ``size x size`` image from the layer shapes.

    With N patches, T = 1 + R + N tokens, width D, FFN hidden H, patch p:
    patch embed 2*N*(3*p*p)*D; per block qkv 2*T*D*3D, proj 2*T*D*D, MLP 2*T*D*H*2 (SwiGLU:
    2*T*D*2H + 2*T*H*D), attention 2*2*T*T*D (scores and weighted sum over all heads).
    """
    d, h, p = dims.embed_dim, dims.ffn_hidden, dims.patch_size
    n = (size // p) ** 2
    t = 1 + dims.num_register_tokens + n
    patch_embed = 2 * n * 3 * p * p * d
    ffn = 2 * t * d * h * 2 if dims.ffn == "mlp" else 2 * t * d * 2 * h + 2 * t * h * d
    block = 2 * t * d * 3 * d + 2 * t * d * d + ffn + 2 * 2 * t * t * d
    return patch_embed + dims.depth * block


def analytic_head_flops(in_dim: int, head: HeadConfig) -> int:
    """Forward FLOPs of a projection head on one token: 2 * in * out per linear layer."""
    if head.nlayers == 1:
        widths = [in_dim, head.bottleneck_dim]
    else:
        widths = [in_dim] + [head.hidden_dim] * (head.nlayers - 1) + [head.bottleneck_dim]
    mlp = sum(2 * a * b for a, b in zip(widths, widths[1:], strict=False))
    return mlp + 2 * head.bottleneck_dim * head.n_prototypes


# --------------------------------------------------------------------------------------------
# Per-image cost of a stage
# --------------------------------------------------------------------------------------------


def tokens_per_crop(size: int, patch_size: int, num_register_tokens: int = 0) -> int:
    """Tokens a ``size x size`` crop puts through the blocks: CLS + registers + patches."""
    return 1 + num_register_tokens + (size // patch_size) ** 2


@dataclass(frozen=True)
class ImageCost:
    """GFLOPs of one training image (all its crops) in one stage, by part."""

    student_backbone: float
    student_heads: float
    teacher_backbone: float
    teacher_heads: float

    @property
    def total(self) -> float:
        return (
            self.student_backbone + self.student_heads + self.teacher_backbone + self.teacher_heads
        )


def image_cost(
    cfg: Config,
    global_size: int,
    local_size: int,
    *,
    backbone_flops=counted_backbone_flops,  # noqa: ANN001 - (ModelConfig, int) -> int
    head_flops=counted_head_flops,  # noqa: ANN001 - (int, HeadConfig) -> int
) -> ImageCost:
    """GFLOPs per training image at these crop sizes under the module's convention."""
    dims = VitDims.from_config(cfg.model)
    n_local = cfg.crops.local_crops_number
    fwd_g = backbone_flops(cfg.model, global_size)
    fwd_l = backbone_flops(cfg.model, local_size) if n_local else 0
    dino_tok = head_flops(dims.embed_dim, cfg.dino.head)
    ibot_head = cfg.ibot.head if cfg.ibot.separate_head else cfg.dino.head
    ibot_tok = head_flops(dims.embed_dim, ibot_head)
    masked = masked_patches_per_image(cfg, global_size)
    train = 1.0 + BACKWARD_FACTOR
    g = 1e-9
    return ImageCost(
        student_backbone=g * train * (N_GLOBAL_CROPS * fwd_g + n_local * fwd_l),
        student_heads=g * train * ((N_GLOBAL_CROPS + n_local) * dino_tok + masked * ibot_tok),
        teacher_backbone=g * N_GLOBAL_CROPS * fwd_g,
        teacher_heads=g * (N_GLOBAL_CROPS * dino_tok + masked * ibot_tok),
    )


def masked_patches_per_image(cfg: Config, global_size: int) -> float:
    """Expected iBOT-masked patches over the 2 global crops of one image."""
    lo, hi = cfg.ibot.mask_ratio_min_max
    n = (global_size // cfg.model.patch_size) ** 2
    return N_GLOBAL_CROPS * cfg.ibot.mask_sample_probability * (lo + hi) / 2 * n


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
    global_batch: int
    total_steps: int
    stages: list[StagePlan]
    images: int
    pflops: float
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
    batch = cfg.train.batch_size_per_gpu * gpus
    n_local = cfg.crops.local_crops_number
    r = cfg.model.num_register_tokens
    stages = []
    for st, a, b in zip(resolve_stages(cfg.curriculum, cfg.crops), starts, ends, strict=True):
        steps = max(0, min(b, run_steps) - min(a, run_steps))
        cost = image_cost(cfg, st.global_crops_size, st.local_crops_size)
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
                masked_patches_per_image=masked_patches_per_image(cfg, st.global_crops_size),
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
        batch_size_per_gpu=cfg.train.batch_size_per_gpu,
        global_batch=batch,
        total_steps=run_steps,
        stages=stages,
        images=images,
        pflops=pflops,
        gflops_per_image=pflops * 1e6 / images if images else 0.0,
        tokens_per_image=(sum(s.tokens_per_image * s.images for s in stages) / images)
        if images
        else 0.0,
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
        f"{run.global_batch} images ({run.batch_size_per_gpu}/GPU x {run.gpus} GPU)"
    )
    cols = f"{'stage':<18}{'steps':>9}  {'crops (px)':<14}{'tokens/img':>11}"
    cols += f"{'GFLOPs/img':>12}{'PFLOPs':>12}"
    lines = [head, cols]
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
        "2 global crops, heads included; totals assume the GPUs shown (--gpus)"
    )
    return "\n".join(lines)
