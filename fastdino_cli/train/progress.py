"""Metrics log (``metrics.jsonl``) and progress display for the training loop.

Every ``log_period`` iterations (and at the first step, the last step and each stage start) one
JSON object is appended to ``metrics.jsonl`` (through ``rundir.MetricsWriter``, the log's one
writer) with the scheduled values, each loss term, gradient norms, images/s, the fraction of the
window spent waiting for data and the number of non-finite (skipped) steps in the window
(``non_finite``). The same record goes to the live trackers of ``train.trackers``
(``train/tracking.py``). On a terminal a rich progress bar shows ETA, loss and
images/s; otherwise the same record is printed as one plain line. Events of the run (a skipped
image, a skipped step) are one ``fastdino: ...`` line each on stderr (``note``), never a Python
warning with its source line.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from fastdino_cli import console
from fastdino_cli.rundir import MetricsWriter
from fastdino_cli.train.tracking import Trackers


class ProgressReporter:
    """Windowed throughput, the metrics file and the on-screen progress."""

    def __init__(
        self,
        metrics_path: Path | None,
        *,
        start: int,
        stop: int,
        total: int,
        log_period: int,
        global_batch: int,
        rich: bool | None = None,
        enabled: bool = True,
        trackers: Trackers | None = None,
    ) -> None:
        self.path = metrics_path
        self.start, self.stop, self.total = start, stop, total
        self.log_period = log_period
        self.global_batch = global_batch
        self.enabled = enabled
        self.use_rich = enabled and (sys.stdout.isatty() if rich is None else rich)
        self.last: dict[str, Any] = {}
        self._win_t0 = time.perf_counter()
        self._win_steps = 0
        self._win_wait = 0.0
        self._win_bad = 0
        self.trackers = trackers or Trackers([])
        self._t_start = time.perf_counter()
        self._bar = None
        self._file = None

    def __enter__(self) -> ProgressReporter:
        if self.path is not None:
            self._file = MetricsWriter(self.path).__enter__()
        if self.use_rich:
            self._bar = console.Bar(
                "pretrain", self.stop, completed=self.start, stream=sys.stdout, enabled=True
            ).start()
        return self

    def step(self, record: dict[str, Any], *, wait: float, stage_changed: bool = False) -> None:
        """Account one finished iteration; log it when due."""
        self._win_steps += 1
        self._win_wait += wait
        self._win_bad += 0 if record.get("finite", True) else 1
        step = record["step"]
        due = (
            (step + 1) % self.log_period == 0
            or step + 1 == self.stop
            or stage_changed
            or not record.get("finite", True)
        )
        if self._bar is not None:
            self._bar.update(completed=step + 1)
        if not due:
            return
        now = time.perf_counter()
        elapsed = max(now - self._win_t0, 1e-9)
        record = dict(record)  # plain values already (``train.step.PendingStep.resolve``)
        record["images_per_s"] = self._win_steps * self.global_batch / elapsed
        record["data_wait"] = min(1.0, self._win_wait / elapsed)
        record["non_finite"] = self._win_bad
        record["time"] = time.time()
        self._win_t0, self._win_steps, self._win_wait, self._win_bad = now, 0, 0.0, 0
        self.last = record
        if not self.enabled:
            return
        if self._file is not None:
            self._file.append(record)
        self.trackers.log(record)
        info = console.progress_fields(
            stage=record["stage"],
            size=record["global_crops_size"],
            loss=record["loss"],
            lr=record["lr"],
            images_per_s=record["images_per_s"],
        )
        if self._bar is not None:
            self._bar.update(info=info)
        else:
            done = step + 1 - self.start
            rate = done / max(now - self._t_start, 1e-9)
            eta = (self.stop - step - 1) / rate if rate > 0 else float("nan")
            info += f" data-wait {record['data_wait']:.0%}"
            print(console.progress_line("pretrain", step + 1, self.stop, info, eta), flush=True)

    def note(self, message: str) -> None:
        """One line about the run, ``fastdino: message``, on stderr (through the bar's console
        while a progress bar is shown, so the bar stays intact); only the main process speaks."""
        if not self.enabled:
            return
        console.note(message)

    def __exit__(self, *exc: object) -> None:
        self.trackers.close()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._file is not None:
            self._file.__exit__(*exc)
            self._file = None
