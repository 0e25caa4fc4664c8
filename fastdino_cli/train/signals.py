"""SIGTERM and SIGINT during training: finish the step, checkpoint, stop.

Schedulers (Slurm, Kubernetes) send SIGTERM before they kill a job; a user at a terminal presses
Ctrl-C (SIGINT). Both become a request the loop reads when it queues the next step, so every
rank stops at the same step (``train/step.py`` carries the request with the step) after
``checkpoint.pt`` is written. Data-loader workers ignore both (``train/loader.py``).
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """SIGTERM (a scheduler) and SIGINT (Ctrl-C) become a request the loop honours after the
    step in progress: checkpoint, then stop. A second SIGINT interrupts at once
    (``KeyboardInterrupt``), for whoever does not want to wait for the checkpoint. Signals are
    only caught in the main thread (Python delivers them there)."""

    SIGNALS = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}

    def __init__(self) -> None:
        self.received: str | None = None
        """The first stop signal received (``sigterm`` / ``sigint``), None before."""
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        name = self.SIGNALS[signal.Signals(signum)]
        if name == "sigint" and self.received == "sigint":
            raise KeyboardInterrupt
        self.received = self.received or name

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()
