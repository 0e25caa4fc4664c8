"""``optim.*``: AdamW, the learning-rate and weight-decay schedules and parameter groups
(the formulas are in ``train/schedules.py``)."""

from __future__ import annotations

from pydantic import Field

from fastdino_cli.config.base import Section


class OptimConfig(Section):
    """AdamW, the learning-rate and weight-decay schedules and parameter groups."""

    epochs: float = Field(100, gt=0)
    """Length of the run in "epochs" (``train.epoch_length`` iterations, or
    ``train.epoch_images`` images)."""
    warmup_epochs: float = Field(10, ge=0)
    """Epochs of linear learning-rate warmup from 0 (restarted segments: see the stage's
    ``warmup_epochs``)."""
    base_lr: float = Field(0.004, gt=0)
    """Learning rate at a global batch of ``lr_scaling_batch`` images (sqrt scaling)."""
    lr_scaling_batch: int = Field(1024, ge=1)
    """Global batch at which the peak learning rate equals ``base_lr``: peak = base_lr *
    sqrt(global batch / lr_scaling_batch)."""
    min_lr: float = Field(1e-6, ge=0)
    """Learning rate the cosine schedule ends at."""
    weight_decay: float = Field(0.04, ge=0)
    """AdamW weight decay at the start of a schedule segment."""
    weight_decay_end: float = Field(0.4, ge=0)
    """Weight decay at the end of the segment, reached by a cosine schedule."""
    layerwise_decay: float = Field(0.9, gt=0, le=1)
    """Layer-wise learning-rate decay: block i (from 0) of L gets decay ** (L - i), the
    embeddings decay ** (L + 1), the heads 1; 1.0 turns it off."""
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    """Extra learning-rate multiplier of the patch embedding."""
    clip_grad: float | None = Field(3.0, gt=0)
    """Gradient-norm clip applied separately to backbone, DINO head and iBOT head (null: no
    clipping)."""
    freeze_last_layer_epochs: float = Field(1, ge=0)
    """Epochs at the start of each segment during which the heads' prototype layers do not
    learn."""
    adamw_beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1 (decay of the first-moment estimate)."""
    adamw_beta2: float = Field(0.999, ge=0, lt=1)
    """AdamW beta2 (decay of the second-moment estimate)."""
    fused: bool | None = None
    """Fused AdamW (null: on CUDA only)."""
