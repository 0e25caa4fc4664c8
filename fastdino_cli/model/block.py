"""Transformer block of the DINOv2 ViT, its FFNs, LayerScale and stochastic depth.

A block runs on the tokens of one or several groups of crops at once (``cat_groups`` layout:
``(B, N, D)`` for one group, the concatenation ``(T, D)`` for several), so LayerNorm, qkv, proj
and the FFN each run once per block however many crop sizes the student sees; only attention
needs the group boundaries (``attention.py``).

Shapes: ``B`` images, ``N`` tokens per image, ``T`` tokens of all images, ``D`` width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.model.attention import Attention, GroupShapes, group_shapes

# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (hub name ``gamma``)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (hub names ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU FFN as in the ViT-g/14 release: ``w3(silu(a) * b)`` with ``[a, b] = w12(x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def ffn_hidden_dim(dim: int, mlp_ratio: float, ffn: str) -> int:
    """Hidden width: ``dim * mlp_ratio`` for the MLP; for SwiGLU two thirds of it, rounded up
    to a multiple of 8 (1536 -> 4096 for ViT-g), which is what the hub weights hold."""
    hidden = int(dim * mlp_ratio)
    if ffn == "swiglu":
        return (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden


Branch = Callable[[Tensor, GroupShapes], Tensor]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim: token width.
        num_heads: attention heads.
        ffn: ``"mlp"`` or ``"swiglu"``.
        ffn_hidden: hidden width of the FFN.
        layerscale_init: LayerScale initial value; None replaces LayerScale by ``nn.Identity``.
        drop_path: probability of dropping each residual branch per sample (training only).
        efficient_drop_path: compute a branch only on the kept samples (DINOv2's trick).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        ffn: str = "mlp",
        ffn_hidden: int,
        layerscale_init: float | None = None,
        drop_path: float = 0.0,
        efficient_drop_path: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = (
            LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, ffn_hidden) if ffn == "swiglu" else Mlp(dim, ffn_hidden)
        self.ls2 = (
            LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        )
        self.drop_path = drop_path
        self.efficient_drop_path = efficient_drop_path
        self.attn_backend = "sdpa"

    def _attn_branch(self, x: Tensor, shapes: GroupShapes) -> Tensor:
        return self.ls1(self.attn(self.norm1(x), shapes, self.attn_backend))

    def _ffn_branch(self, x: Tensor, shapes: GroupShapes) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        """One group ``(B, N, D)`` -> ``(B, N, D)``."""
        return self.forward_packed(x, group_shapes([x]))

    def forward_packed(self, x: Tensor, shapes: GroupShapes) -> Tensor:
        """Tokens of every group in one tensor: ``(B, N, D)`` for one group, else the
        concatenation ``(T, D)`` (see ``cat_groups``); the token-wise layers run once on it."""
        rate = self.drop_path if self.training else 0.0
        x = residual(x, shapes, self._attn_branch, rate, self.efficient_drop_path)
        return residual(x, shapes, self._ffn_branch, rate, self.efficient_drop_path)


def cat_groups(xs: Sequence[Tensor]) -> Tensor:
    """One group stays ``(B, N, D)`` (Grad-CAM hooks see images); several become ``(T, D)``."""
    if len(xs) == 1:
        return xs[0]
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])


def split_groups(y: Tensor, shapes: GroupShapes) -> list[Tensor]:
    """Inverse of ``cat_groups``."""
    if y.dim() == 3:
        return [y]
    parts = y.split([b * n for b, n in shapes])
    return [p.view(b, n, -1) for p, (b, n) in zip(parts, shapes, strict=True)]


def _sample_rows(shapes: GroupShapes, kept: Sequence[Tensor]) -> Tensor:
    """Row indices in the ``(T, D)`` layout of the tokens of the kept samples of each group."""
    rows, offset = [], 0
    for (b, n), idx in zip(shapes, kept, strict=True):
        tok = torch.arange(n, device=idx.device)
        rows.append((offset + idx[:, None] * n + tok[None, :]).flatten())
        offset += b * n
    return torch.cat(rows)


def residual(
    x: Tensor, shapes: GroupShapes, branch: Branch, rate: float, efficient: bool
) -> Tensor:
    """``x + drop_path(branch(x))`` per sample, ``x`` in the ``cat_groups`` layout.

    Ordinary drop path zeroes the branch of each sample with probability ``rate`` and divides
    the kept ones by ``1 - rate``. The efficient variant (DINOv2) draws ``max(int(B(1-rate)), 1)``
    samples per group without replacement, runs the branch only on them and adds it back scaled
    by ``B / kept``: the same expectation, and the dropped samples cost nothing.
    """
    if rate <= 0.0:
        return x + branch(x, shapes)
    if not efficient:
        keep = torch.empty(sum(b for b, _ in shapes), device=x.device, dtype=x.dtype)
        keep.bernoulli_(1.0 - rate).div_(1.0 - rate)
        if x.dim() == 3:
            return x + branch(x, shapes) * keep[:, None, None]
        # per image -> per token by broadcasting (no repeat tensor copied to the device)
        parts = keep.split([b for b, _ in shapes])
        per_token = torch.cat(
            [k[:, None].expand(-1, n).reshape(-1) for k, (_, n) in zip(parts, shapes, strict=True)]
        )
        return x + branch(x, shapes) * per_token[:, None]
    kept = [torch.randperm(b, device=x.device)[: max(int(b * (1.0 - rate)), 1)] for b, _ in shapes]
    sub_shapes = tuple((len(k), n) for k, (_, n) in zip(kept, shapes, strict=True))
    if x.dim() == 3:  # one group in image layout
        (b, _), idx = shapes[0], kept[0]
        y = branch(x[idx], sub_shapes)
        return torch.index_add(x, 0, idx, y.to(x.dtype), alpha=b / len(idx))
    rows = _sample_rows(shapes, kept)
    y = branch(x[rows], sub_shapes)
    scale = torch.cat(
        [
            torch.full((len(k) * n,), b / len(k), device=x.device, dtype=x.dtype)
            for k, (b, n) in zip(kept, shapes, strict=True)
        ]
    )
    return torch.index_add(x, 0, rows, y.to(x.dtype) * scale[:, None])
