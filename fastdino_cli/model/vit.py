"""Vision Transformer backbone that holds the official DINOv2 weights exactly.

Papers: ViT (Dosovitskiy et al. 2021, https://arxiv.org/abs/2010.11929), DINOv2 (Oquab et al.
2023, https://arxiv.org/abs/2304.07193), registers (Darcet et al. 2024,
https://arxiv.org/abs/2309.16588), FastDINOv2 (Zhang et al. 2025).

Parameter names follow the DINOv2 hub layout (``cls_token``, ``pos_embed``, ``register_tokens``,
``mask_token``, ``patch_embed.proj``, ``blocks.i.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2 | mlp.w12,mlp.w3,ls2.gamma}``, ``norm``) so that importing released weights is
a renaming of chunked block names at most.

Token layout inside the blocks: ``[CLS, registers..., patches...]``; registers carry no position
embedding. Multi-crop batches go through ``forward_list``: all groups share one pass of the
token-wise layers, attention runs per group (``block.py``, ``attention.py``).

Shapes: ``B`` images, ``N`` patches, ``R`` registers, ``D`` width, ``T`` tokens of all images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import CheckpointError, ConfigError
from fastdino_cli.model.attention import group_shapes, resolve_backend
from fastdino_cli.model.block import (  # noqa: F401 - re-exported for callers of the backbone
    Block,
    LayerScale,
    Mlp,
    SwiGLU,
    cat_groups,
    ffn_hidden_dim,
    residual,
    split_groups,
)


@dataclass
class BackboneOutput:
    """What one forward of the backbone returns (DINOv2's ``forward_features`` dict, typed)."""

    cls: Tensor
    """(B, D) CLS token after the final norm."""
    registers: Tensor
    """(B, R, D) register tokens after the final norm (R may be 0)."""
    patches: Tensor
    """(B, N, D) patch tokens after the final norm."""
    prenorm: Tensor
    """(B, 1 + R + N, D) tokens before the final norm."""
    masks: Tensor | None
    """(B, N) bool masks that replaced patch embeddings by the mask token, if any."""


# --------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a Conv2d with kernel = stride = patch (hub name ``proj``)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, D), N = (H // p) * (W // p)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """DINOv2-compatible ViT (see the module docstring). Build with ``build_vit``.

    Args:
        arch: name of the size preset the dims came from (kept for ``arch_dict``).
        patch_size, img_size: the learnable position grid is ``img_size // patch_size`` square.
        embed_dim, depth, num_heads: width, number of blocks, heads.
        ffn, mlp_ratio: FFN type (``mlp`` / ``swiglu``) and hidden ratio.
        num_register_tokens: registers inserted after CLS.
        layerscale_init: LayerScale initial value, None for no LayerScale.
        drop_path_rate: uniform stochastic-depth rate of every block.
        efficient_drop_path: run dropped branches only on kept samples.
        interpolate_antialias, interpolate_offset: position-embedding interpolation settings
            (see ``interpolate_pos_embed``; the defaults are what timm computes).
        attention: attention backend request (``auto|sdpa|xformers|varlen``).
    """

    def __init__(
        self,
        *,
        arch: str = "custom",
        patch_size: int = 16,
        img_size: int = 224,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        efficient_drop_path: bool = True,
        interpolate_antialias: bool = True,
        interpolate_offset: float = 0.0,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        if img_size < patch_size:
            raise ConfigError(f"model.img_size={img_size} is smaller than patch {patch_size}")
        self.arch = arch
        self.patch_size = patch_size
        self.img_size = img_size
        self.pos_grid = img_size // patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.ffn = ffn
        self.mlp_ratio = mlp_ratio
        self.num_register_tokens = num_register_tokens
        self.layerscale_init = layerscale_init
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.attention = attention

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid**2, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        hidden = ffn_hidden_dim(embed_dim, mlp_ratio, ffn)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                ffn=ffn,
                ffn_hidden=hidden,
                layerscale_init=layerscale_init,
                drop_path=drop_path_rate,
                efficient_drop_path=efficient_drop_path,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.init_weights()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def arch_dict(self) -> dict[str, Any]:
        """Plain data that rebuilds this backbone (``checkpoint["arch"]``)."""
        return {
            "arch": self.arch,
            "patch_size": self.patch_size,
            "img_size": self.img_size,
            "pos_grid": self.pos_grid,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "ffn": self.ffn,
            "mlp_ratio": self.mlp_ratio,
            "ffn_hidden_dim": ffn_hidden_dim(self.embed_dim, self.mlp_ratio, self.ffn),
            "num_register_tokens": self.num_register_tokens,
            "layerscale": self.layerscale_init is not None,
            "layerscale_init": self.layerscale_init,
            "interpolate_antialias": self.interpolate_antialias,
            "interpolate_offset": self.interpolate_offset,
        }

    # ---- init --------------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """DINOv2's init: pos embed and Linear trunc_normal(0.02), zero biases, CLS and registers
        N(0, 1e-6), mask token zeros, LayerNorm (1, 0), LayerScale its init value, conv default.
        Works on meta tensors too (then it only records intent)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        self.patch_embed.proj.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                m.gamma.fill_(m.init_value)

    # ---- tokens ------------------------------------------------------------------------------

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, 1 + R + N, D): patches, mask tokens, CLS, pos embed, registers."""
        b, _, h, w = x.shape
        p = self.patch_size
        if h < p or w < p:
            raise ConfigError(f"input {h}x{w} is smaller than one {p}x{p} patch")
        t = self.patch_embed(x)
        if masks is not None:
            if masks.shape != t.shape[:2]:
                raise ValueError(f"masks {tuple(masks.shape)} do not match patches {t.shape[:2]}")
            t = torch.where(masks.unsqueeze(-1), self.mask_token.to(t.dtype).unsqueeze(0), t)
        t = torch.cat([self.cls_token.expand(b, -1, -1).to(t.dtype), t], dim=1)
        pos = interpolate_pos_embed(
            self.pos_embed,
            (h // p, w // p),
            antialias=self.interpolate_antialias,
            offset=self.interpolate_offset,
        )
        t = t + pos.to(t.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(b, -1, -1).to(t.dtype)
            t = torch.cat([t[:, :1], regs, t[:, 1:]], dim=1)
        return t

    def _set_backend(self, device: torch.device, n_groups: int) -> None:
        # One group gains nothing from packing: grouped SDPA is one dense call then.
        request = "sdpa" if n_groups == 1 and self.attention == "auto" else self.attention
        backend = resolve_backend(request, device)
        for blk in self.blocks:
            blk.attn_backend = backend

    def _output(self, x: Tensor, masks: Tensor | None) -> BackboneOutput:
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return BackboneOutput(
            cls=x_norm[:, 0],
            registers=x_norm[:, 1 : 1 + r],
            patches=x_norm[:, 1 + r :],
            prenorm=x,
            masks=masks,
        )

    # ---- forwards ----------------------------------------------------------------------------

    def forward_list(
        self, xs: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None
    ) -> list[BackboneOutput]:
        """Several groups of same-size images (e.g. global and local crops) in one pass."""
        masks = list(masks) if masks is not None else [None] * len(xs)
        if len(masks) != len(xs):
            raise ValueError(f"{len(xs)} groups of images but {len(masks)} masks")
        tokens = [self.prepare_tokens(x, m) for x, m in zip(xs, masks, strict=True)]
        self._set_backend(tokens[0].device, len(tokens))
        shapes = group_shapes(tokens)
        x = cat_groups(tokens)
        for blk in self.blocks:
            x = blk.forward_packed(x, shapes)
        tokens = split_groups(x, shapes)
        return [self._output(t, m) for t, m in zip(tokens, masks, strict=True)]

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        """One batch of normalised images ``(B, 3, H, W)``."""
        return self.forward_list([x], [masks])[0]

    def forward(self, x: Tensor) -> Tensor:
        """(B, D) normalised CLS token."""
        return self.forward_features(x).cls

    def get_intermediate_layers(
        self, x: Tensor, n: int | Sequence[int] = 1, norm: bool = True
    ) -> list[tuple[Tensor, Tensor]]:
        """(patches (B, N, D), cls (B, D)) after the last ``n`` blocks (or the listed block
        indices), in block order; the final norm is applied when ``norm``."""
        depth = len(self.blocks)
        wanted = set(range(depth - n, depth)) if isinstance(n, int) else set(n)
        if not wanted or min(wanted) < 0 or max(wanted) >= depth:
            raise ValueError(f"blocks {sorted(wanted)} out of range for depth {depth}")
        t = self.prepare_tokens(x)
        self._set_backend(t.device, 1)
        outs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in wanted:
                outs.append(self.norm(t) if norm else t)
        r = self.num_register_tokens
        return [(o[:, 1 + r :], o[:, 0]) for o in outs]


# --------------------------------------------------------------------------------------------
# Position embedding interpolation (shared by forward, import and evaluation)
# --------------------------------------------------------------------------------------------


def interpolate_pos_embed(
    pos_embed: Tensor,
    grid_hw: tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    antialias: bool = True,
    offset: float = 0.0,
) -> Tensor:
    """Resample a square learnable position grid to ``grid_hw`` (rows, cols of patches).

    ``pos_embed`` is ``(1, P + M*M, D)`` with ``P`` prefix tokens (CLS) kept as they are.
    Matches DINOv2: returned unchanged when the grid already matches; otherwise bicubic in fp32
    and cast back. With ``offset > 0`` (the legacy kludge of the non-register releases and the
    FastDINOv2 code, which use 0.1 without antialias) the target is given as
    ``scale_factor = (h + offset) / M, (w + offset) / M``; with 0 as an explicit size.

    The defaults (antialias, offset 0) are what DINOv2-with-registers, DINOv3 and timm's
    ``resample_abs_pos_embed`` compute, so a model that uses them runs identically in timm at
    every input size. Antialias matters when upsampling too: PyTorch's antialiased bicubic uses
    the a = -0.5 kernel, the plain one a = -0.75.
    """
    gh, gw = grid_hw
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    m = math.isqrt(grid.shape[1])
    if m * m != grid.shape[1]:
        raise CheckpointError(f"pos_embed has {grid.shape[1]} grid entries, not a square")
    if (gh, gw) == (m, m):
        return pos_embed
    dim = grid.shape[-1]
    grid_1DMM = grid.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs: dict[str, Any] = {"scale_factor": ((gh + offset) / m, (gw + offset) / m)}
    else:
        kwargs = {"size": (gh, gw)}
    out = F.interpolate(grid_1DMM, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(out.shape[-2:]) != (gh, gw):
        raise AssertionError(f"interpolated grid {tuple(out.shape[-2:])} != {(gh, gw)}")
    out = out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(pos_embed.dtype)
    return torch.cat([prefix, out], dim=1)


# --------------------------------------------------------------------------------------------
# Size table and builders
# --------------------------------------------------------------------------------------------

ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "ffn": "mlp"},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "ffn": "mlp"},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "ffn": "mlp"},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn": "mlp"},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24, "ffn": "swiglu"},
}
"""DINOv2 sizes (the hub builds ViT-g with the SwiGLU FFN, the others with the GELU MLP)."""


def build_vit(cfg: ModelConfig, device: torch.device | str | None = None) -> VisionTransformer:
    """The backbone described by the ``model`` config section (arch preset + overrides).

    ``device="meta"`` builds it without memory (shapes only), e.g. to inspect ViT-g on a laptop.
    """
    base = ARCHS[cfg.arch]
    kwargs = {
        "arch": cfg.arch,
        "patch_size": cfg.patch_size,
        "img_size": cfg.img_size,
        "embed_dim": cfg.embed_dim or base["embed_dim"],
        "depth": cfg.depth or base["depth"],
        "num_heads": cfg.num_heads or base["num_heads"],
        "ffn": cfg.ffn or base["ffn"],
        "mlp_ratio": cfg.mlp_ratio,
        "num_register_tokens": cfg.num_register_tokens,
        "layerscale_init": cfg.layerscale_init,
        "drop_path_rate": cfg.drop_path_rate,
        "efficient_drop_path": cfg.efficient_drop_path,
        "interpolate_antialias": cfg.interpolate_antialias,
        "interpolate_offset": cfg.interpolate_offset,
        "attention": cfg.attention,
    }
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return VisionTransformer(**kwargs)


ARCH_KEYS = (
    "patch_size",
    "img_size",
    "embed_dim",
    "depth",
    "num_heads",
    "ffn",
    "mlp_ratio",
    "num_register_tokens",
)


def build_vit_from_arch(
    arch: dict[str, Any], device: torch.device | str | None = None
) -> VisionTransformer:
    """Rebuild a backbone from ``checkpoint["arch"]`` (``VisionTransformer.arch_dict()``)."""
    missing = [k for k in ARCH_KEYS if k not in arch]
    if missing:
        raise CheckpointError(f"checkpoint arch entry lacks {missing}; it cannot be rebuilt")
    layerscale = arch.get("layerscale", True)
    kwargs = {k: arch[k] for k in ARCH_KEYS}
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return VisionTransformer(
            arch=str(arch.get("arch", "custom")),
            layerscale_init=(arch.get("layerscale_init") or 1.0) if layerscale else None,
            interpolate_antialias=bool(arch.get("interpolate_antialias", False)),
            interpolate_offset=float(arch.get("interpolate_offset", 0.1)),
            attention="sdpa",
            **kwargs,
        )
