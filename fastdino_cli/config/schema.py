"""The root ``Config``: every section, and the checks that span sections."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from fastdino_cli.config.base import Section
from fastdino_cli.config.batch import Batch, batch_for_world, iterations_per_epoch
from fastdino_cli.config.inputs import CropsConfig, DataConfig
from fastdino_cli.config.model import ModelConfig
from fastdino_cli.config.objective import DinoConfig, IbotConfig, TeacherConfig
from fastdino_cli.config.optim import OptimConfig
from fastdino_cli.config.paper import PaperConfig
from fastdino_cli.config.plain import plain
from fastdino_cli.config.run import DistributedConfig, TrainConfig
from fastdino_cli.config.stages import CurriculumConfig

MAX_ITERATIONS = 10**12
"""Longest run accepted (far beyond any real one): larger products of ``optim.epochs`` and
the iterations per epoch overflow the integer step counts downstream."""


class Config(Section):
    """The whole resolved configuration of a run."""

    preset: str | None = None
    """Name of the preset this config was resolved from (informational)."""
    description: str = ""
    """One line saying what the preset or run is (``presets list`` shows it)."""
    model: ModelConfig = ModelConfig()
    """The ViT backbone: size, patch, position-embedding grid, registers, attention backend."""
    data: DataConfig = DataConfig()
    """The pretraining images and how the data loader reads them."""
    crops: CropsConfig = CropsConfig()
    """Multi-crop views (2 global + N local crops per image) and their photometric
    augmentations, DINOv2's values by default."""
    dino: DinoConfig = DinoConfig()
    """The DINO cls-token loss, its projection head and the KoLeo regulariser."""
    ibot: IbotConfig = IbotConfig()
    """The iBOT masked-patch loss, its block masking and its (shared or separate) head."""
    optim: OptimConfig = OptimConfig()
    """AdamW, the learning-rate and weight-decay schedules (per segment: see ``curriculum``)
    and the parameter groups."""
    teacher: TeacherConfig = TeacherConfig()
    """The teacher: EMA momentum and softmax-temperature schedules."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """The FastDINOv2 curriculum: stages by training progress, each with its crop sizes, noise
    patching and an optional restart of every schedule."""
    train: TrainConfig = TrainConfig()
    """The run: batch, length, run directory, checkpoints, precision, logging and safety
    nets."""
    distributed: DistributedConfig = DistributedConfig()
    """Sharding across processes with FSDP2; ignored in a single process."""
    paper: PaperConfig | None = None
    """The published recipe a paper preset reproduces (null, the default: none), by its global
    batch and epoch in images: ``--plan`` and the run's ``config.yaml`` list where a run
    departs from it."""

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """Checks across sections. Crops LARGER than ``model.img_size`` are valid (the position
        embedding is interpolated: FastDINOv2's stage 2 does exactly that), and so are sizes that
        are not multiples of the patch (the border is dropped, as DINOv2's 96 px local crops with
        patch 14 do); invalid are sizes below one patch, a global crop smaller than the local
        crop it is paired with, and ranges that are swapped or out of bounds."""
        total = self.optim.epochs * self.iterations_per_epoch
        if not total <= MAX_ITERATIONS:  # finite values can still overflow the product
            raise ValueError(
                f"optim.epochs={self.optim.epochs:g} x {self.iterations_per_epoch} iterations "
                f"per epoch = {total:.3g} iterations; a run has at most "
                f"{MAX_ITERATIONS:.0e}: lower optim.epochs"
            )
        self._check_crop_sizes()
        self._check_ranges()
        return self

    def _stage_crop(self, i: int, kind: str) -> tuple[str, int]:
        """(key it comes from, size) of the ``kind`` crops of stage ``i``."""
        own = getattr(self.curriculum.stages[i], f"{kind}_crops_size")
        if own is not None:
            return f"curriculum.stages.{i}.{kind}_crops_size", own
        return f"crops.{kind}_crops_size", getattr(self.crops, f"{kind}_crops_size")

    def _check_crop_sizes(self) -> None:
        p = self.model.patch_size
        sizes = {
            "model.img_size": self.model.img_size,
            "crops.global_crops_size": self.crops.global_crops_size,
            "crops.local_crops_size": self.crops.local_crops_size,
        }
        for i in range(len(self.curriculum.stages)):
            for kind in ("global", "local"):
                key, size = self._stage_crop(i, kind)
                sizes[key] = size
        for key, size in sizes.items():
            if size < p:
                raise ValueError(
                    f"{key}={size} is smaller than model.patch_size={p}: no patch fits"
                )
        if self.crops.local_crops_number == 0:
            return  # no local crops: their size is never used
        for i in range(len(self.curriculum.stages)):
            (gkey, g), (lkey, lsize) = self._stage_crop(i, "global"), self._stage_crop(i, "local")
            if g < lsize:
                own = gkey.startswith("curriculum.") or lkey.startswith("curriculum.")
                where = "" if own or len(self.curriculum.stages) == 1 else f" in stage {i}"
                raise ValueError(
                    f"{gkey}={g} is smaller than {lkey}={lsize}{where}: global crops must be "
                    "at least as large as local crops (swap the two sizes?)"
                )

    def _check_ranges(self) -> None:
        ranges = {  # key: (value, lowest min allowed, min may equal it, highest max)
            "crops.global_crops_scale": (self.crops.global_crops_scale, 0.0, False, 1.0),
            "crops.local_crops_scale": (self.crops.local_crops_scale, 0.0, False, 1.0),
            "crops.blur_sigma": (self.crops.blur_sigma, 0.0, False, float("inf")),
            "ibot.mask_ratio_min_max": (self.ibot.mask_ratio_min_max, 0.0, True, 1.0),
        }
        for key, ((a, b), lo, closed, hi) in ranges.items():
            if not ((lo <= a) if closed else (lo < a)) or not a <= b <= hi:
                rule = f"{lo} {'<=' if closed else '<'} min <= max" + (
                    f" <= {hi}" if hi != float("inf") else ""
                )
                raise ValueError(f"{key}=[{a}, {b}] must satisfy {rule}")

    @property
    def iterations_per_epoch(self) -> int:
        """Iterations of one "epoch": ``train.epoch_length``, or ``train.epoch_images`` over
        the global batch (the same on any number of processes; ``config/batch.py``)."""
        return iterations_per_epoch(self.train)

    @property
    def total_iterations(self) -> int:
        """Iterations of the whole run (``optim.epochs`` x ``iterations_per_epoch``)."""
        return max(1, round(self.optim.epochs * self.iterations_per_epoch))

    def batch(self, world_size: int) -> Batch:
        """The global and per-device batch on ``world_size`` processes (``ConfigError`` when
        the global batch does not divide over them)."""
        return batch_for_world(self.train, world_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for YAML and checkpoints."""
        return plain(self.model_dump(mode="python"))
