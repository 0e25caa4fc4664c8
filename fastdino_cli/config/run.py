"""``train.*`` and ``distributed.*``: how a run is driven (batch, length, outputs, precision,
safety nets) and how it is sharded across processes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fastdino_cli.config.base import Section
from fastdino_cli.config.batch import check_batch_keys, fill_partners
from fastdino_cli.config.objective import CenteringConfig


class TrainConfig(Section):
    """The run: batch, length, outputs, precision and safety nets."""

    @model_validator(mode="before")
    @classmethod
    def _one_key_per_pair(cls, data: Any) -> Any:
        return fill_partners(data)  # batch and epoch keys: see config/batch.py

    @model_validator(mode="after")
    def _batch_keys(self) -> TrainConfig:
        check_batch_keys(self)
        return self

    global_batch: int | None = Field(64, ge=1)
    """Images per optimizer step, all processes together: the recipe's batch (paper presets:
    40 on ImageNet-100, 512 on ImageNet-1K). Each process takes global_batch / processes, which
    must divide evenly; the learning rate is scaled for it. Null: ``batch_size_per_gpu``."""
    batch_size_per_gpu: int | None = Field(None, ge=1)
    """Images per process and step instead of a global batch (which is then this x processes
    and changes with the GPU count); setting one of the two batch keys clears the other. Runs
    stored before ``global_batch`` existed name only this key."""
    epoch_length: int | None = Field(1250, ge=1)
    """Iterations per "epoch" (DINOv2's OFFICIAL_EPOCH_LENGTH): a pure multiplier. Null:
    ``epoch_images``."""
    epoch_images: int | None = Field(None, ge=1)
    """An "epoch" in images instead (paper presets: 50,000 on ImageNet-100, 1,280,000 on
    ImageNet-1K): epoch_images / global_batch iterations, rounded, so another global batch keeps
    the images per epoch; setting one of the two epoch keys clears the other."""
    output_dir: str = "runs/fastdino"
    """Run directory (``--out``): config, metrics, checkpoints; resolved to an absolute path
    when the run starts."""
    checkpoint_period: int = Field(1000, ge=1)
    """Iterations between resumable checkpoints (``checkpoint.pt``)."""
    keep_checkpoints: int = Field(3, ge=0)
    """Periodic ``checkpoints/step_*.pt`` files kept (0: none)."""
    seed: int = 0
    """Seed of the weights' initialisation, the data order and every augmentation draw."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision, honoured on CPU and GPU alike (fp16 adds a dynamic grad scaler);
    auto: bf16 on CUDA when supported (else fp16), fp32 on the CPU."""
    centering: CenteringConfig = CenteringConfig()
    """How the teacher targets of the DINO and iBOT losses are centred."""
    log_period: int = Field(10, ge=1)
    """Iterations between log lines (the first, the last and each stage start are always
    logged)."""
    max_bad_steps: int = Field(5, ge=1)
    """Consecutive non-finite losses tolerated before the run stops."""
    max_steps: int | None = Field(None, ge=1)
    """Stop early after this many iterations (schedules still span the full run)."""
    trackers: list[Literal["tensorboard", "wandb"]] = []
    """Live experiment trackers fed the records of ``metrics.jsonl`` at the log period, from
    the main process (``tensorboard``: event files in ``RUN_DIR/tensorboard``, needs
    ``pip install 'fastdino[tracking]'``; ``wandb``: needs ``pip install 'fastdino[wandb]'``).
    Run control: a run resumes with other trackers."""


class DistributedConfig(Section):
    """Sharding across processes (FSDP2); ignored in a single process."""

    fsdp: bool = True
    """Shard student and teacher with FSDP2 (``fully_shard`` per block); false: replicate them
    on every process (DDP)."""
    reshard_after_forward: bool = True
    """Free the student's gathered weights after its forward (less memory, one more all-gather
    in backward); the teacher always reshards."""
    param_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Dtype the sharded weights are gathered and computed in (auto: follow
    ``train.precision``)."""
    reduce_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Dtype the backbone's gradients are reduced in across processes (the heads' always in
    fp32)."""
