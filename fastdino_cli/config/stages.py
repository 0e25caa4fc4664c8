"""``curriculum.*``: the FastDINOv2 curriculum as a list of stages by training progress
(what the stages mean for crops and schedules is ``curriculum.py``'s business)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fastdino_cli.config.base import Section


class NoisePatchingConfig(Section):
    """Gaussian noise patching (FastDINOv2): one noisy square on the full image before cropping."""

    enabled: bool = False
    """Add the noise square in this stage (FastDINOv2 does so in its second stage only)."""
    prob: float = Field(1.0, ge=0, le=1)
    """Probability that an image gets the noise square (FastDINOv2: always)."""
    max_sigma: float = Field(0.2, ge=0)
    """Noise std is drawn from U(0, max_sigma) in [0, 1] pixel space (0.2 is what ran)."""


class StageConfig(Section):
    """One curriculum stage, active from the previous stage's ``end`` up to its own."""

    name: str = ""
    """Label shown in logs, metrics and plans (empty: ``stage<i>``)."""
    end: float = Field(1.0, gt=0, le=1)
    """Fraction of the total iterations at which this stage ends."""
    global_crops_size: int | None = Field(None, ge=1)
    """Global crop side in this stage (null: ``crops.global_crops_size``)."""
    local_crops_size: int | None = Field(None, ge=1)
    """Local crop side in this stage (null: ``crops.local_crops_size``)."""
    noise_patching: NoisePatchingConfig = NoisePatchingConfig()
    """Gaussian noise patching in this stage."""
    restart: bool = False
    """At the stage start, reset AdamW state and restart every schedule (FastDINOv2 stage 2)."""
    schedule_epochs: float | None = Field(None, gt=0)
    """Length the schedules of the segment this stage opens (the first stage, or one with
    ``restart``) are built for (null: until the next restart or the end). FastDINOv2's stage 1
    uses the full run's length and is cut at 75%."""
    warmup_epochs: float | None = Field(None, ge=0)
    """Learning-rate warmup of the segment this stage opens, in epochs (null:
    ``optim.warmup_epochs``)."""


class CurriculumConfig(Section):
    """Stages ordered by training progress; the last one ends at 1.0."""

    stages: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])
    """The stages in order (default: one stage covering the whole run)."""

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumConfig:
        if not self.stages:
            raise ValueError("needs at least one stage")
        ends = [s.end for s in self.stages]
        if any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(f"stage ends must increase strictly, got {ends}")
        if ends[-1] != 1.0:
            raise ValueError(f"the last stage must end at 1.0, got {ends[-1]}")
        return self
