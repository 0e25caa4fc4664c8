"""``dino.*``, ``ibot.*``, ``train.centering.*`` and ``teacher.*``: DINOv2's objective, its
projection heads, and the teacher targets the student is trained towards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fastdino_cli.config.base import Section


class HeadConfig(Section):
    """A DINO-style projection head: MLP, L2 norm, weight-normalised prototypes."""

    n_prototypes: int = Field(65536, ge=1)
    """Number of prototypes K: the head's output dimension, the classes of the pretext task."""
    bottleneck_dim: int = Field(256, ge=1)
    """Width of the L2-normalised bottleneck feeding the prototype layer."""
    hidden_dim: int = Field(2048, ge=1)
    """Width of the hidden MLP layers."""
    nlayers: int = Field(3, ge=1)
    """Linear layers in the MLP, GELU between them (1: a single projection)."""
    norm_last_layer: bool = False
    """Freeze each prototype's weight-norm scale g at 1 (DINO v1); False trains g as DINOv2."""


class DinoConfig(Section):
    """DINO cls-token loss, its head, and KoLeo."""

    loss_weight: float = Field(1.0, ge=0)
    """Weight of the DINO cls-token loss (global and local terms) in the total loss."""
    head: HeadConfig = HeadConfig()
    """The DINO head on the CLS token (also the iBOT head unless ``ibot.separate_head``)."""
    koleo_loss_weight: float = Field(0.1, ge=0)
    """Weight of the KoLeo regulariser on the student's global-crop CLS features (0: off)."""
    student_temp: float = Field(0.1, gt=0)
    """Softmax temperature of the student outputs, for the DINO and the iBOT loss."""


class IbotConfig(Section):
    """iBOT masked-patch loss, block masking and the (shared or separate) head."""

    loss_weight: float = Field(1.0, ge=0)
    """Weight of the iBOT masked-patch loss in the total loss (0: no masked-patch term)."""
    separate_head: bool = False
    """Give iBOT its own head (``ibot.head``) instead of sharing the DINO head."""
    head: HeadConfig = HeadConfig()
    """The iBOT head on the patch tokens; used only with ``ibot.separate_head``."""
    mask_sample_probability: float = Field(0.5, ge=0, le=1)
    """Fraction of global crops that get a mask."""
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5)
    """Stratified range of the fraction of patches masked in a masked crop."""


class CenteringConfig(Section):
    """How the teacher targets are centred."""

    method: Literal["softmax", "sinkhorn_knopp"] = "softmax"
    """Softmax centering with a running centre, or Sinkhorn-Knopp normalisation (no centre)."""
    center_momentum: float = Field(0.9, ge=0, le=1)
    """EMA momentum of the softmax centre (the weight kept from the previous centre)."""
    sinkhorn_iterations: int = Field(3, ge=1)
    """Row/column normalisation rounds of Sinkhorn-Knopp."""


class TeacherConfig(Section):
    """EMA momentum and teacher temperature schedules."""

    momentum: float = Field(0.992, ge=0, le=1)
    """EMA momentum at the start of a schedule segment (teacher = m * teacher + (1 - m) *
    student)."""
    final_momentum: float = Field(1.0, ge=0, le=1)
    """EMA momentum at the end of the segment, reached by a cosine schedule."""
    warmup_temp: float = Field(0.04, gt=0)
    """Teacher softmax temperature at the start of the temperature warmup."""
    temp: float = Field(0.07, gt=0)
    """Teacher softmax temperature after the warmup."""
    warmup_temp_epochs: float = Field(30, ge=0)
    """Epochs of the linear warmup from ``warmup_temp`` to ``temp``."""
