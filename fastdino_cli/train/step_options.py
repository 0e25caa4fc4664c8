"""Options of the training step that trade nothing in the result for speed or memory.

Why each exists:

- ``apply_activation_checkpointing``: a ViT-B/16 student at 224 px with 2 + 8 crops keeps ~70
  activations of ``(tokens, D)`` per block for backward; recomputing each block's forward in
  backward instead (``torch.utils.checkpoint``, non-reentrant) trades ~1/3 more compute for a
  memory footprint of one block, so a larger per-GPU batch fits. Student only: the teacher never
  runs backward. The RNG state is preserved, so stochastic depth drops the same samples in the
  recomputation and the gradients are those of the plain model.
- ``apply_compile``: ``torch.compile`` of each block's ``forward_packed`` fuses LayerNorm,
  LayerScale, GELU and residual adds, which are memory-bound and dominate small-token steps
  (112 px crops: 50 tokens per image). Per block, not the whole model, so that a graph break
  (efficient stochastic depth draws a data-dependent subset) stays local and FSDP2 still wraps
  each block. Default off: its benefit is measured per GPU (``benchmarks/pretrain_step.py
  --compile``), never assumed.
- ``fused_adamw``: one multi-tensor kernel for the whole AdamW update instead of a dozen per
  parameter (None: on CUDA only). It also lets a non-finite step be skipped on the device
  (``train/step.py``), so the step never waits for the GPU.

Model code stays single-device and untouched: these functions replace instance attributes
(``blk.forward_packed``), so state-dict keys and checkpoints do not change.
Order (as torchtitan applies them): activation checkpointing, then compile, then FSDP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _blocks(backbones: Iterable[nn.Module]) -> list[nn.Module]:
    return [blk for bb in backbones for blk in bb.blocks]


def _checkpointed(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(fn)
    def run(x: Tensor, shapes) -> Tensor:
        if not torch.is_grad_enabled():  # teacher / eval: nothing to save memory on
            return fn(x, shapes)
        return checkpoint(fn, x, shapes, use_reentrant=False, preserve_rng_state=True)

    run.fastdino_checkpointed = True  # type: ignore[attr-defined]
    return run


def apply_activation_checkpointing(backbone: nn.Module) -> int:
    """Recompute every block of ``backbone`` in backward; returns the number of blocks wrapped."""
    n = 0
    for blk in _blocks([backbone]):
        if getattr(blk.forward_packed, "fastdino_checkpointed", False):
            continue
        blk.forward_packed = _checkpointed(blk.forward_packed)
        n += 1
    return n


def apply_compile(backbones: Iterable[nn.Module], **compile_kwargs: Any) -> int:
    """``torch.compile`` each block's ``forward_packed`` in place; returns the blocks compiled."""
    n = 0
    for blk in _blocks(backbones):
        if getattr(blk.forward_packed, "fastdino_compiled", False):
            continue
        compiled = torch.compile(blk.forward_packed, **compile_kwargs)
        compiled.fastdino_compiled = True  # type: ignore[attr-defined]
        blk.forward_packed = compiled
        n += 1
    return n


def apply_step_options(meta_arch: nn.Module, *, compile: bool, activation_checkpointing: bool):
    """The model settings (``model.compile``, ``model.activation_checkpointing``) on an
    ``SSLMetaArch``: checkpointing on the student, then compile on both backbones.

    Call before FSDP sharding and before the optimizer is built (parameters are unchanged, so
    the order relative to the optimizer does not matter for correctness).
    """
    student, teacher = meta_arch.student["backbone"], meta_arch.teacher["backbone"]
    if activation_checkpointing:
        apply_activation_checkpointing(student)
    if compile:
        apply_compile([student, teacher])
    return meta_arch


def fused_adamw(setting: bool | None, device: torch.device) -> bool:
    """``optim.fused``: None means fused on CUDA only (the CPU kernel exists but gains little)."""
    return setting if setting is not None else device.type == "cuda"
