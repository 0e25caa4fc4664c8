"""Multi-head self-attention over one or several groups of crops, with selectable backends.

A DINOv2 student sees crops of different sizes at once (2B global crops of ``Ng`` tokens and
``nB`` local crops of ``Nl`` tokens). Everything except the attention itself is token-wise, so
the transformer block concatenates all tokens into one ``(T, D)`` matrix for LayerNorm, qkv,
proj and the FFN (their FLOPs dominate), and only attention needs to know where one image ends.

Backends (``model.attention``):

``sdpa``      one ``F.scaled_dot_product_attention`` call per crop-size group. Exact, runs on
              CPU with backward, picks flash / memory-efficient kernels on CUDA. The default.
``xformers``  one packed call over all images with ``BlockDiagonalMask`` (CUDA only).
``varlen``    one packed call with ``torch.nn.attention.varlen.varlen_attn`` (CUDA only).
``auto``      xformers if it imports and runs, else varlen, else sdpa with one warning;
              on CPU it is simply sdpa (the packed kernels have no CPU implementation).

``dense_mask`` is an internal backend: the packed layout with an explicit boolean block-diagonal
mask in SDPA. It is slow (the mask is T x T) but runs everywhere, so the CPU tests exercise the
same packing and splitting logic as the CUDA backends.

Shapes: ``B`` images, ``N`` tokens per image, ``T`` tokens of all images of all groups,
``H`` heads, ``d`` head width, ``D = H * d``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdino_cli.errors import ConfigError

GroupShapes = tuple[tuple[int, int], ...]
"""(images, tokens per image) of each group, in order."""

BACKENDS = ("auto", "sdpa", "xformers", "varlen")
_warned: set[str] = set()


class Attention(nn.Module):
    """Multi-head self-attention with hub parameter names ``qkv`` and ``proj``.

    Args:
        dim: token width ``D``.
        num_heads: number of heads; must divide ``dim``.
        qkv_bias: bias on the qkv projection (DINOv2: True).
        proj_bias: bias on the output projection (DINOv2: True).
    """

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(
                f"model.embed_dim={dim} is not divisible by model.num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, shapes: GroupShapes, backend: str = "sdpa") -> Tensor:
        """``x``: the tokens of every group, either ``(B, N, D)`` for a single group or the
        concatenation ``(T, D)`` of several; returns the same layout."""
        qkv = self.qkv(x)
        out = attend_packed(qkv.reshape(-1, qkv.shape[-1]), shapes, self.num_heads, backend)
        return self.proj(out.view(*x.shape[:-1], -1))


def attend_packed(qkv_T3D: Tensor, shapes: GroupShapes, num_heads: int, backend: str) -> Tensor:
    """Attention of each image over its own tokens; ``qkv_T3D`` is ``(T, 3D)`` -> ``(T, D)``."""
    if backend == "sdpa":
        return _grouped_sdpa(qkv_T3D, shapes, num_heads)
    if backend == "dense_mask":
        return _dense_mask_sdpa(qkv_T3D, shapes, num_heads)
    if backend == "xformers":
        return _xformers(qkv_T3D, shapes, num_heads)
    if backend == "varlen":
        return _varlen(qkv_T3D, shapes, num_heads)
    raise ValueError(f"unknown attention backend {backend!r}")


def _grouped_sdpa(qkv_T3D: Tensor, shapes: GroupShapes, num_heads: int) -> Tensor:
    outs = []
    for qkv, (b, n) in zip(qkv_T3D.split([b * n for b, n in shapes]), shapes, strict=True):
        q, k, v = qkv.view(b, n, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B,H,N,d)
        o_BHNd = F.scaled_dot_product_attention(q, k, v)
        outs.append(o_BHNd.transpose(1, 2).reshape(b * n, -1))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _seqlens(shapes: GroupShapes) -> list[int]:
    return [n for b, n in shapes for _ in range(b)]


def block_diagonal_mask(shapes: GroupShapes, device: torch.device | str = "cpu") -> Tensor:
    """``(T, T)`` bool mask, True where query and key belong to the same image."""
    lens = torch.tensor(_seqlens(shapes), device=device)
    owner = torch.repeat_interleave(torch.arange(len(lens), device=device), lens)
    return owner[:, None] == owner[None, :]


def _dense_mask_sdpa(qkv_T3D: Tensor, shapes: GroupShapes, num_heads: int) -> Tensor:
    t = qkv_T3D.shape[0]
    q, k, v = qkv_T3D.view(1, t, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (1,H,T,d)
    mask = block_diagonal_mask(shapes, qkv_T3D.device)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(t, -1)


@functools.lru_cache(maxsize=32)
def _xformers_bias(seqlens: tuple[int, ...]):  # noqa: ANN202 - xformers type, imported lazily
    from xformers.ops import fmha

    return fmha.BlockDiagonalMask.from_seqlens(list(seqlens))


def _xformers(qkv_T3D: Tensor, shapes: GroupShapes, num_heads: int) -> Tensor:
    from xformers.ops import memory_efficient_attention

    t = qkv_T3D.shape[0]
    q, k, v = qkv_T3D.view(1, t, 3, num_heads, -1).unbind(2)  # (1,T,H,d)
    o = memory_efficient_attention(q, k, v, attn_bias=_xformers_bias(tuple(_seqlens(shapes))))
    return o.reshape(t, -1)


def _varlen(qkv_T3D: Tensor, shapes: GroupShapes, num_heads: int) -> Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if qkv_T3D.dtype not in (torch.float16, torch.bfloat16):
        # The flash kernel behind varlen has no fp32 path; grouped SDPA is exact in fp32.
        _warn_once("varlen-fp32", "varlen attention needs fp16/bf16; using grouped SDPA in fp32")
        return _grouped_sdpa(qkv_T3D, shapes, num_heads)
    t = qkv_T3D.shape[0]
    q, k, v = qkv_T3D.view(t, 3, num_heads, -1).unbind(1)  # (T,H,d)
    cu = cumulative_seqlens(shapes, qkv_T3D.device)
    longest = max(n for _, n in shapes)
    return varlen_attn(q, k, v, cu, cu, longest, longest).reshape(t, -1)


def cumulative_seqlens(shapes: GroupShapes, device: torch.device) -> Tensor:
    """(images + 1,) int32 offsets of each image's first token, built on ``device`` from the
    shapes alone: ``torch.tensor(list, device=cuda)`` would be a blocking host-to-device copy
    in every block of every step."""
    lens = [torch.full((b,), n, dtype=torch.int32, device=device) for b, n in shapes if b > 0]
    zero = torch.zeros(1, dtype=torch.int32, device=device)
    return torch.cat([zero, *lens]).cumsum(0, dtype=torch.int32)


# --------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------


def _probe(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` runs a tiny packed call on ``device``, else why not (one line)."""
    if device.type != "cuda":
        return f"{backend} attention needs CUDA (device is {device.type})"
    try:
        qkv = torch.randn(2 * 3 + 5, 3 * 64, device=device, dtype=torch.bfloat16)
        attend_packed(qkv, ((2, 3), (1, 5)), 1, backend)
    except Exception as e:  # import errors, missing kernels, ABI mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{backend} attention is unavailable ({first[:120]})"
    return None


@functools.lru_cache(maxsize=8)
def _resolve_cached(requested: str, device_type: str, index: int | None) -> tuple[str, str | None]:
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    if requested == "sdpa":
        return "sdpa", None
    if requested in ("xformers", "varlen"):
        why = _probe(requested, device)
        return (requested, None) if why is None else ("", why)
    if device.type != "cuda":
        return "sdpa", None
    reasons = []
    for candidate in ("xformers", "varlen"):
        why = _probe(candidate, device)
        if why is None:
            return candidate, None
        reasons.append(why)
    return "sdpa", "; ".join(reasons)


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def resolve_backend(requested: str, device: torch.device | str) -> str:
    """The backend that will run for ``model.attention=requested`` on ``device``.

    An explicit ``xformers`` / ``varlen`` that cannot run is a ``ConfigError``; ``auto`` falls
    back to grouped ``sdpa`` (warning once per process when CUDA is there but no packed kernel
    works). ``dense_mask`` is accepted for tests and benchmarks.
    """
    if requested == "dense_mask":
        return requested
    if requested not in BACKENDS:
        raise ConfigError(f"model.attention={requested!r} is not one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    chosen, why = _resolve_cached(requested, device.type, device.index)
    if not chosen:
        raise ConfigError(f"model.attention={requested}: {why}; use model.attention=auto or sdpa")
    if why:
        _warn_once(
            "auto",
            f"model.attention=auto: no packed attention kernel ({why}); "
            "using grouped scaled_dot_product_attention",
        )
    return chosen


def group_shapes(xs: Sequence[Tensor]) -> GroupShapes:
    """(images, tokens) of each ``(B, N, D)`` tensor."""
    return tuple((int(x.shape[0]), int(x.shape[1])) for x in xs)
