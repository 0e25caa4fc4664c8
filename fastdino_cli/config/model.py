"""``model.*``: the ViT backbone (the size table itself lives in ``model/vit.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastdino_cli.config.base import Section

ARCH_NAMES = ("vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2")


class ModelConfig(Section):
    """The ViT backbone (see ``model/vit.py`` for the size table)."""

    arch: Literal["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_giant2"] = "vit_small"
    """Size preset: dims, depth, heads and FFN type of the DINOv2 architectures."""
    patch_size: int = Field(16, ge=1)
    """Side of the square patches (16 for FastDINOv2, 14 for the released DINOv2 weights)."""
    img_size: int = Field(224, ge=1)
    """Image size the learnable position embedding grid is built for (grid = img_size // patch).
    Other input sizes interpolate it bicubically on the fly."""
    embed_dim: int | None = Field(None, ge=1)
    """Override of the arch's width (null: the arch's value)."""
    depth: int | None = Field(None, ge=1)
    """Override of the arch's number of blocks (null: the arch's value)."""
    num_heads: int | None = Field(None, ge=1)
    """Override of the arch's number of attention heads (null: the arch's value)."""
    ffn: Literal["mlp", "swiglu"] | None = None
    """Override of the arch's FFN type (null: the arch's value)."""
    mlp_ratio: float = Field(4.0, gt=0)
    """Hidden width of the FFN relative to the embedding width."""
    num_register_tokens: int = Field(0, ge=0)
    """Register tokens inserted after CLS (no position embedding)."""
    layerscale_init: float | None = 1e-5
    """Initial LayerScale value; null disables LayerScale."""
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Uniform stochastic-depth rate of the student (the teacher never drops)."""
    efficient_drop_path: bool = True
    """Compute a dropped residual branch only on the kept samples (DINOv2's trick)."""
    interpolate_antialias: bool = True
    """Antialias the bicubic position-embedding resize, as timm, DINOv3 and DINOv2-reg4 do
    (False with offset 0.1: the FastDINOv2 code and the non-register DINOv2 releases)."""
    interpolate_offset: float = Field(0.0, ge=0.0)
    """DINOv2's legacy scale-factor offset: 0 resizes to the exact grid (timm can reproduce
    only this, with antialias); 0.1 is the FastDINOv2 code's and the non-reg releases'."""
    attention: Literal["auto", "sdpa", "xformers", "varlen"] = "auto"
    """Attention backend for multi-crop batches: grouped SDPA, or one packed call on CUDA."""
    compile: bool = False
    """``torch.compile`` each transformer block."""
    activation_checkpointing: bool = False
    """Recompute block activations in backward to save memory."""
