"""FLOPs of one training image: counted from the model, with an analytic cross-check.

Why: FastDINOv2's claim is a compute claim (2.25x fewer FLOPs per training image for ViT-B/16 on
ImageNet-1K). ``image_cost`` is what one image of a stage costs, counted from the model that
would actually train; ``train/plan.py`` sums it over a run's stages, and the step benchmark
divides it by the measured time (MFU). It takes the sections it needs (model, heads, crops).

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
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastdino_cli.config import Config, DinoConfig, HeadConfig, IbotConfig, ModelConfig
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
    *,
    model: ModelConfig,
    dino: DinoConfig,
    ibot: IbotConfig,
    local_crops_number: int,
    global_size: int,
    local_size: int,
    backbone_flops=counted_backbone_flops,  # noqa: ANN001 - (ModelConfig, int) -> int
    head_flops=counted_head_flops,  # noqa: ANN001 - (int, HeadConfig) -> int
) -> ImageCost:
    """GFLOPs per training image (2 global crops of ``global_size``, ``local_crops_number``
    local crops of ``local_size``) under the module's convention."""
    dims = VitDims.from_config(model)
    n_local = local_crops_number
    fwd_g = backbone_flops(model, global_size)
    fwd_l = backbone_flops(model, local_size) if n_local else 0
    dino_tok = head_flops(dims.embed_dim, dino.head)
    ibot_head = ibot.head if ibot.separate_head else dino.head
    ibot_tok = head_flops(dims.embed_dim, ibot_head)
    masked = masked_patches_per_image(ibot, model.patch_size, global_size)
    train = 1.0 + BACKWARD_FACTOR
    g = 1e-9
    return ImageCost(
        student_backbone=g * train * (N_GLOBAL_CROPS * fwd_g + n_local * fwd_l),
        student_heads=g * train * ((N_GLOBAL_CROPS + n_local) * dino_tok + masked * ibot_tok),
        teacher_backbone=g * N_GLOBAL_CROPS * fwd_g,
        teacher_heads=g * (N_GLOBAL_CROPS * dino_tok + masked * ibot_tok),
    )


def masked_patches_per_image(ibot: IbotConfig, patch_size: int, global_size: int) -> float:
    """Expected iBOT-masked patches over the 2 global crops of one image."""
    lo, hi = ibot.mask_ratio_min_max
    n = (global_size // patch_size) ** 2
    return N_GLOBAL_CROPS * ibot.mask_sample_probability * (lo + hi) / 2 * n


def config_image_cost(cfg: Config, global_size: int, local_size: int) -> ImageCost:
    """``image_cost`` of a resolved config's model, heads and crops at these crop sizes (a
    distillation run's, frozen teacher included: ``train/distill.py``)."""
    if cfg.distill.teacher:
        from fastdino_cli.train.distill import distill_image_cost

        return distill_image_cost(cfg, global_size, local_size)
    return image_cost(
        model=cfg.model,
        dino=cfg.dino,
        ibot=cfg.ibot,
        local_crops_number=cfg.crops.local_crops_number,
        global_size=global_size,
        local_size=local_size,
    )
