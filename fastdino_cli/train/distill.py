"""A distillation run's teacher: read from ``distill.teacher``, checked, and what it changes.

Why here: the loop, the plan and the build all need the same three answers about the teacher
checkpoint, and each is a rule with one owner:

``resolve_distill(cfg)``       the run's config for distillation (stored in ``config.yaml``, so
                               resume compares like with like): no stochastic depth, no masking,
                               and in ``heads`` mode the student's heads sized to the teacher's
                               prototype counts (a fresh student head with the teacher's K).
``build_distill_meta_arch``    ``ssl.distill.DistillMetaArch`` with the frozen teacher loaded.
``distill_image_cost``         the FLOPs of one training image, the frozen teacher's forward
                               passes included (``train/flops.py`` calls it for ``--plan``).

Bad input is one line naming ``distill.teacher``: a missing or unreadable file, a checkpoint
without teacher weights, or a teacher without DINO head in ``heads`` mode.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import ARCH_NAMES, Config, HeadConfig, ModelConfig, validate_config
from fastdino_cli.errors import CheckpointError, ConfigError
from fastdino_cli.ssl.distill import DistillMetaArch
from fastdino_cli.train.flops import (
    BACKWARD_FACTOR,
    N_GLOBAL_CROPS,
    ImageCost,
    VitDims,
    counted_backbone_flops,
    counted_head_flops,
    image_cost,
)


def _where(cfg: Config) -> str:
    return f"distill.teacher={cfg.distill.teacher}"


def load_teacher_checkpoint(cfg: Config) -> dict[str, Any]:
    """The teacher checkpoint of ``cfg`` (``checkpoint.load``); errors name the key.

    Memory-mapped: the loop, the build and every stage of ``--plan`` read it, and the plan needs
    only its arch and head shapes, so a ViT-L teacher is not read into memory each time."""
    try:
        ckpt = ckpt_io.load(cfg.distill.teacher, mmap=True)
    except CheckpointError as e:
        raise ConfigError(f"{_where(cfg)}: {e}") from None
    if not ckpt_io.sub_state_dict(ckpt.get("teacher") or {}, "backbone"):
        raise ConfigError(f"{_where(cfg)}: the checkpoint holds no teacher backbone weights")
    return ckpt


def teacher_heads(ckpt: dict[str, Any]) -> tuple[HeadConfig | None, HeadConfig | None]:
    """(DINO head, separate iBOT head or None) of a teacher checkpoint, from its stored config;
    (None, None) when its weights hold no DINO head (an imported backbone)."""
    weights = ckpt["teacher"]
    if not ckpt_io.sub_state_dict(weights, "dino_head"):
        return None, None
    stored = ckpt.get("config") or {}
    dino = HeadConfig.model_validate((stored.get("dino") or {}).get("head") or {})
    ibot = None
    if ckpt_io.sub_state_dict(weights, "ibot_head"):
        ibot = HeadConfig.model_validate((stored.get("ibot") or {}).get("head") or {})
    return dino, ibot


def teacher_model_config(arch: dict[str, Any]) -> ModelConfig:
    """The ``ModelConfig`` that builds the same backbone shapes as ``checkpoint["arch"]``
    (for counting FLOPs; the weights are loaded with ``build_vit_from_arch``)."""
    return ModelConfig(
        arch=arch["arch"] if arch.get("arch") in ARCH_NAMES else "vit_small",  # dims below
        patch_size=arch["patch_size"],
        img_size=arch["img_size"],
        embed_dim=arch["embed_dim"],
        depth=arch["depth"],
        num_heads=arch["num_heads"],
        ffn=arch["ffn"],
        mlp_ratio=arch["mlp_ratio"],
        num_register_tokens=arch["num_register_tokens"],
        layerscale_init=arch.get("layerscale_init") if arch.get("layerscale", True) else None,
    )


def resolve_distill(cfg: Config, ckpt: dict[str, Any] | None = None) -> Config:
    """``cfg`` as a distillation run trains it (unchanged when ``distill.teacher`` is null).

    Sets ``model.drop_path_rate=0`` and ``ibot.mask_sample_probability=0`` (DINOv2 distils
    without stochastic depth and without masking); in ``heads`` mode sizes the student's heads
    to the teacher's prototype counts and gives it a separate iBOT head exactly when the
    teacher has one. Idempotent.
    """
    if not cfg.distill.teacher:
        return cfg
    ckpt = ckpt if ckpt is not None else load_teacher_checkpoint(cfg)
    data = cfg.to_dict()
    data["model"]["drop_path_rate"] = 0.0
    data["ibot"]["mask_sample_probability"] = 0.0
    if cfg.distill.mode == "heads":
        dino, ibot = teacher_heads(ckpt)
        if dino is None:
            raise ConfigError(
                f"{_where(cfg)} has no DINO head (a backbone, e.g. imported weights): "
                "distil its features with distill.mode=features"
            )
        data["dino"]["head"]["n_prototypes"] = dino.n_prototypes
        data["ibot"]["separate_head"] = ibot is not None
        if ibot is not None:
            data["ibot"]["head"]["n_prototypes"] = ibot.n_prototypes
    return validate_config(data)


def build_frozen_teacher(cfg: Config, ckpt: dict[str, Any]) -> nn.ModuleDict:
    """The teacher of ``ckpt`` as a ``ModuleDict`` (``backbone`` and, in ``heads`` mode, its
    heads), strictly loaded, frozen, in eval mode."""
    backbone, _ = ckpt_io.load_teacher_backbone(ckpt)
    parts: dict[str, nn.Module] = {"backbone": backbone}
    if cfg.distill.mode == "heads":
        from fastdino_cli.model.heads import build_head

        for key, head in zip(("dino_head", "ibot_head"), teacher_heads(ckpt), strict=True):
            if head is None:
                continue
            module = build_head(backbone.embed_dim, head)
            ckpt_io.load_state_dict_strict(
                module, ckpt_io.sub_state_dict(ckpt["teacher"], key), what=f"{_where(cfg)} {key}"
            )
            parts[key] = module
    frozen = nn.ModuleDict(parts)
    frozen.requires_grad_(False)
    return frozen.eval()


def build_distill_meta_arch(cfg: Config) -> DistillMetaArch:
    """Student, EMA copy and frozen teacher of a distillation run (``cfg`` resolved by
    ``resolve_distill``, as the loop does; an unresolved one is resolved here)."""
    ckpt = load_teacher_checkpoint(cfg)
    cfg = resolve_distill(cfg, ckpt)
    frozen = build_frozen_teacher(cfg, ckpt)
    return DistillMetaArch(
        model=cfg.model,
        dino=cfg.dino,
        ibot=cfg.ibot,
        centering=cfg.train.centering,
        frozen_teacher=frozen,
        mode=cfg.distill.mode,
        cls_loss_weight=cfg.distill.cls_loss_weight,
        patch_loss_weight=cfg.distill.patch_loss_weight,
    )


def distill_image_cost(cfg: Config, global_size: int, local_size: int) -> ImageCost:
    """GFLOPs of one training image of a distillation run (``train/flops.py``'s convention).

    student   3 x forward of its backbone on every crop; heads mode: the DINO head on every
              crop's CLS token and the iBOT head on EVERY patch token of the 2 global crops
              (no masking); features mode: the two projections on the same tokens;
    teacher   the FROZEN teacher's forward on the 2 global crops at its matched size
              (student grid x teacher patch), its DINO head on their CLS tokens and its iBOT
              head on every patch token (heads mode). The student's EMA runs no forward.
    """
    ckpt = load_teacher_checkpoint(cfg)
    cfg = resolve_distill(cfg, ckpt)
    teacher = teacher_model_config(ckpt["arch"])
    p_s, p_t = cfg.model.patch_size, teacher.patch_size
    n_local = cfg.crops.local_crops_number
    grid = global_size // p_s
    patches = N_GLOBAL_CROPS * grid * grid
    s_dim = VitDims.from_config(cfg.model).embed_dim
    t_dim = VitDims.from_config(teacher).embed_dim
    train = 1.0 + BACKWARD_FACTOR
    g = 1e-9
    student = image_cost(  # the student's backbone costs what it costs in any run
        model=cfg.model,
        dino=cfg.dino,
        ibot=cfg.ibot,
        local_crops_number=n_local,
        global_size=global_size,
        local_size=local_size,
    )
    if cfg.distill.mode == "heads":
        ibot_s = cfg.ibot.head if cfg.ibot.separate_head else cfg.dino.head
        s_heads = (N_GLOBAL_CROPS + n_local) * counted_head_flops(s_dim, cfg.dino.head)
        s_heads += patches * counted_head_flops(s_dim, ibot_s)
        t_dino, t_ibot = teacher_heads(ckpt)
        t_heads = N_GLOBAL_CROPS * counted_head_flops(t_dim, t_dino)
        t_heads += patches * counted_head_flops(t_dim, t_ibot or t_dino)
    else:
        s_heads = (N_GLOBAL_CROPS + n_local + patches) * 2 * s_dim * t_dim
        t_heads = 0
    return ImageCost(
        student_backbone=student.student_backbone,
        student_heads=g * train * s_heads,
        teacher_backbone=g * N_GLOBAL_CROPS * counted_backbone_flops(teacher, grid * p_t),
        teacher_heads=g * t_heads,
    )
