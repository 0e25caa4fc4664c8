"""``paper.*``: the published recipe a preset reproduces, and where a run departs from it.

Why: a paper preset is a claim ("this is the run that produced the paper's numbers"). The
numbers that make it the same recipe on any hardware, its global batch and its epoch in
images, are stated here next to the settings that run it (``train.*``), so an override of the
batch or the epoch, or a per-GPU batch on another GPU count, is not silent: ``--plan`` and the
run's ``config.yaml`` list the departures (``paper_departures``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from fastdino_cli.config.base import Section

if TYPE_CHECKING:
    from fastdino_cli.config.schema import Config


class PaperConfig(Section):
    """The published recipe a preset reproduces (null: none)."""

    recipe: str
    """Which published run this is (paper, model, data, the hardware it ran on)."""
    global_batch: int = Field(ge=1)
    """The recipe's images per optimizer step, all GPUs together."""
    epoch_images: int = Field(ge=1)
    """The recipe's images per "epoch" (its iterations per epoch x its global batch)."""


def paper_departures(cfg: Config, world_size: int) -> list[str]:
    """Where ``cfg`` on ``world_size`` processes departs from ``cfg.paper`` (empty without a
    paper section, or when the batch and the epoch are the paper's)."""
    paper = cfg.paper
    if paper is None:
        return []
    batch = cfg.batch(world_size)
    out = []
    if batch.global_batch != paper.global_batch:
        how = (
            f"train.global_batch={batch.global_batch}"
            if cfg.train.global_batch is not None
            else f"train.batch_size_per_gpu={batch.per_device} x {world_size} GPU"
        )
        out.append(
            f"global batch {batch.global_batch} ({how}), the paper's is {paper.global_batch}: "
            "another peak learning rate (sqrt scaling) and another sample order"
        )
    per_epoch = cfg.iterations_per_epoch * batch.global_batch
    if per_epoch != paper.epoch_images:
        out.append(
            f"an epoch is {cfg.iterations_per_epoch} iterations x {batch.global_batch} = "
            f"{per_epoch:,} images, the paper's is {paper.epoch_images:,}"
        )
    return out


def departures_note(cfg: Config, world_size: int) -> str:
    """The departures as ``# paper:`` comment lines for the head of a run's ``config.yaml``
    (empty when there are none)."""
    found = paper_departures(cfg, world_size)
    if not found or cfg.paper is None:
        return ""
    lines = [f"# paper: this run departs from the recipe of {cfg.paper.recipe}:"]
    lines += [f"# paper: - {d}" for d in found]
    return "\n".join(lines) + "\n"
