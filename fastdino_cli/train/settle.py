"""Settling a step on the host: its record, the count of non-finite steps, divergence.

A step's scalars reach the host one step late (``train/step.py``); settling reads them, logs the
record (``train/progress.py``), counts consecutive non-finite losses and stops the run, with a
message naming the last good checkpoint, after ``train.max_bad_steps`` of them or as soon as the
weights themselves are not finite.
"""

from __future__ import annotations

from pathlib import Path

from fastdino_cli.config import CurriculumConfig
from fastdino_cli.curriculum import is_stage_start
from fastdino_cli.errors import FastdinoError
from fastdino_cli.train.progress import ProgressReporter
from fastdino_cli.train.step import PendingStep


class TrainingDiverged(FastdinoError):
    """Too many consecutive non-finite losses, or non-finite weights."""


class Settler:
    """Host bookkeeping of a queued step once its scalars are there: the record, the count of
    consecutive non-finite steps and the stop after ``train.max_bad_steps`` of them."""

    def __init__(
        self,
        reporter: ProgressReporter,
        curriculum: CurriculumConfig,
        *,
        start: int,
        total: int,
        max_bad_steps: int,
        bad: int,
        latest: Path,
    ) -> None:
        self.reporter, self.curriculum = reporter, curriculum
        self.start, self.total, self.max_bad_steps = start, total, max_bad_steps
        self.bad = bad
        """Consecutive non-finite steps so far (saved in the checkpoint)."""
        self.latest = latest

    def settle(self, pending: PendingStep) -> tuple[bool, bool]:
        """Log the step, count it, raise ``TrainingDiverged``; (applied, some rank asked to
        stop)."""
        record = pending.resolve()
        step, stop_requested = record["step"], record.pop("stop_requested")
        weights_finite = record.pop("weights_finite")
        self.bad = 0 if record["finite"] else self.bad + 1
        self.reporter.step(
            record,
            wait=record.pop("data_wait_s"),
            stage_changed=step == self.start or is_stage_start(self.curriculum, step, self.total),
        )
        if not weights_finite:
            raise TrainingDiverged(
                f"step {step} made the weights non-finite (inf, nan or too large for float32; "
                f"loss {record['loss']:.4g}); {self._last_good()}; lower optim.base_lr or "
                "check the data"
            )
        if not record["finite"]:
            self.reporter.note(f"step {step}: non-finite loss ({record['loss']}), step skipped")
            if self.bad >= self.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad} consecutive non-finite losses (last at step {step}); "
                    f"{self._last_good()}; lower optim.base_lr or check the data"
                )
        return record["finite"], stop_requested

    def _last_good(self) -> str:
        if self.latest.exists():
            return f"the last good checkpoint is {self.latest}"
        return "no checkpoint was written"
