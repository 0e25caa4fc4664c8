"""``distill.*``: train the student towards a frozen, larger teacher instead of its own EMA.

DINOv2's released ViT-S/B/L were distilled from the ViT-g with the pretraining loop itself and
four changes (a frozen teacher, the student's EMA kept as the final model, no masking and no
stochastic depth, iBOT on the two global crops). ``distill.teacher`` switches a run to that
mode; everything else (schedules, crops, curriculum, checkpoints, resume) is the normal loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastdino_cli.config.base import Section


class DistillConfig(Section):
    """Distillation from a frozen teacher checkpoint (off while ``teacher`` is null)."""

    teacher: str | None = None
    """Path of the frozen teacher: a fastdino checkpoint (``final.pt`` of a run, or one written
    by ``checkpoint import``). null: ordinary self-distillation (no distillation)."""
    mode: Literal["heads", "features"] = "heads"
    """``heads``: DINOv2's recipe, the student's fresh DINO/iBOT heads (with the teacher's
    prototype counts) match the teacher heads' centred softmax targets; needs a teacher with
    heads. ``features``: the student regresses the teacher's normalised CLS and patch tokens
    through a linear projection (cosine loss); works with any backbone (imported weights)."""
    cls_loss_weight: float = Field(1.0, ge=0)
    """``features`` mode: weight of the CLS-token cosine loss."""
    patch_loss_weight: float = Field(1.0, ge=0)
    """``features`` mode: weight of the patch-token cosine loss (global crops, every token)."""
