"""The FastDINOv2 curriculum: stages by training progress and the schedule segments they define.

The curriculum is the only code that knows about stages. Everything else asks it:

- ``stage_at_step(curriculum, step, total_steps)``: crop sizes and noise patching of the stage
  of an iteration. Stage i covers steps ``[round(end_{i-1} * T), round(end_i * T))`` of a run
  of T iterations; ``is_stage_start`` says where one begins.
- ``final_global_crops_size(stored_config)``: the last stage's global crop of a checkpoint's
  stored config (what evaluations resize to).
- ``segment_at_step(...)``: the schedule segment a step belongs to. A segment starts at step 0
  and at the start of each stage with ``restart: true``; it is built for ``schedule_epochs`` of
  the stage that opens it when set (FastDINOv2's stage 1 runs 150 epochs of a 200-epoch schedule)
  and otherwise lasts until the next restart or the end. At a restart the loop resets AdamW
  state and every schedule starts over (warmup from 0, teacher-temperature warmup, momentum and
  weight-decay cosines, last-layer freeze); the teacher and the loss centres carry over.

The data pipeline reads the stage from the step index each sample carries (see
``data/multicrop.py``), so data-loader workers apply stage changes without being recreated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastdino_cli.config import CropsConfig, CurriculumConfig, NoisePatchingConfig


@dataclass(frozen=True)
class Stage:
    """A resolved curriculum stage (crop sizes filled in from ``crops`` when unset)."""

    index: int
    name: str
    start: float
    end: float
    global_crops_size: int
    local_crops_size: int
    noise_patching: NoisePatchingConfig
    restart: bool


@dataclass(frozen=True)
class Segment:
    """A stretch of iterations over which every schedule runs once."""

    start_step: int
    length: int
    """Iterations the schedules are built for (may exceed the steps actually run)."""
    warmup_epochs: float | None
    """Warmup of this segment in epochs (None: ``optim.warmup_epochs``)."""


def resolve_stages(curriculum: CurriculumConfig, crops: CropsConfig | None = None) -> list[Stage]:
    """Every stage with its start fraction and concrete crop sizes."""
    crops = crops or CropsConfig()
    out, start = [], 0.0
    for i, s in enumerate(curriculum.stages):
        out.append(
            Stage(
                index=i,
                name=s.name or f"stage{i}",
                start=start,
                end=s.end,
                global_crops_size=s.global_crops_size or crops.global_crops_size,
                local_crops_size=s.local_crops_size or crops.local_crops_size,
                noise_patching=s.noise_patching,
                restart=s.restart,
            )
        )
        start = s.end
    return out


def stage_starts(curriculum: CurriculumConfig, total_steps: int) -> list[int]:
    """First step of each stage."""
    starts, prev = [], 0
    for s in curriculum.stages:
        starts.append(prev)
        prev = round(s.end * total_steps)
    return starts


def stage_index_at_step(curriculum: CurriculumConfig, step: int, total_steps: int) -> int:
    """Index of the stage that iteration ``step`` (0-based) belongs to."""
    for i, s in enumerate(curriculum.stages):
        if step < round(s.end * total_steps):
            return i
    return len(curriculum.stages) - 1


def stage_at_step(
    curriculum: CurriculumConfig, step: int, total_steps: int, crops: CropsConfig | None = None
) -> Stage:
    """The resolved stage of iteration ``step``."""
    return resolve_stages(curriculum, crops)[stage_index_at_step(curriculum, step, total_steps)]


def is_stage_start(curriculum: CurriculumConfig, step: int, total_steps: int) -> bool:
    """True when iteration ``step`` (> 0) is the first of a new stage."""
    return step > 0 and stage_index_at_step(curriculum, step, total_steps) != stage_index_at_step(
        curriculum, step - 1, total_steps
    )


def final_global_crops_size(config: Mapping[str, Any]) -> int | None:
    """The global crop size of the last stage of a STORED config (a checkpoint's ``config``
    entry, plain data): the resolution the model trained at last, which evaluations use.

    The stage's own size, else ``crops.global_crops_size`` (as ``resolve_stages`` fills it in),
    trusted only when the config is a resolved one (it has a ``model`` section: an imported
    checkpoint may carry a partial config). None when the config does not say.
    """
    stages = (config.get("curriculum") or {}).get("stages") or []
    if stages and isinstance(stages[-1], Mapping) and stages[-1].get("global_crops_size"):
        return int(stages[-1]["global_crops_size"])
    size = (config.get("crops") or {}).get("global_crops_size")
    if size and config.get("model"):
        return int(size)
    return None


def segments(curriculum: CurriculumConfig, total_steps: int, epoch_length: int) -> list[Segment]:
    """The schedule segments of a run (one per restart, plus the first)."""
    starts = stage_starts(curriculum, total_steps)
    opening = [0] + [i for i, s in enumerate(curriculum.stages) if s.restart and i > 0]
    out = []
    for n, i in enumerate(opening):
        st = curriculum.stages[i]
        begin = starts[i]
        until = starts[opening[n + 1]] if n + 1 < len(opening) else total_steps
        length = (
            max(1, round(st.schedule_epochs * epoch_length))
            if st.schedule_epochs is not None
            else max(1, until - begin)
        )
        out.append(Segment(start_step=begin, length=length, warmup_epochs=st.warmup_epochs))
    return out


def segment_at_step(
    curriculum: CurriculumConfig, step: int, total_steps: int, epoch_length: int
) -> Segment:
    """The schedule segment iteration ``step`` belongs to."""
    found = None
    for seg in segments(curriculum, total_steps, epoch_length):
        if step >= seg.start_step:
            found = seg
    assert found is not None
    return found


def is_restart_step(curriculum: CurriculumConfig, step: int, total_steps: int) -> bool:
    """True when ``step`` (> 0) opens a segment: the optimizer state is reset before it."""
    return step > 0 and any(
        seg.start_step == step for seg in segments(curriculum, total_steps, epoch_length=1)
    )
