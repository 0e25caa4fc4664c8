"""Run ``fastdino`` with the training loop held at a step: a process test acts at a known point.

Tests that SIGKILL or SIGTERM a run, or start a second one beside it, must not race the
machine's speed (a fast or idle machine finishes the run first; a busy one is slow to reach the
step). Started through this script instead of ``python -m fastdino_cli``, ``pretrain`` settles
(logs) steps as usual until ``PAUSE_AT`` steps are done, then waits: the run cannot pass that
point before the test has acted, however fast or slow the machine is::

    python tests/_pausing_pretrain.py PAUSE_AT GATE_DIR pretrain --config CFG [overrides ...]

At the pause the run writes ``GATE_DIR/paused`` (holding ``PAUSE_AT``) and waits until a SIGTERM
has reached the loop's own handler, which then stops the run as it would for a scheduler's
signal (the flag is set before the pause ends, so the stop step is known). A SIGKILL ends it at
the pause; so does the end of the test process that started it.

The hook is monkeypatched here, in the test tree (the package holds no test code): it wraps
``ProgressReporter.step``, which the loop calls once per settled step, after the step's record
is in ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from fastdino_cli.cli import main
from fastdino_cli.train.progress import ProgressReporter


def hold_at(pause_at: int, gate: Path) -> None:
    """Make ``pretrain`` wait at the pause once ``pause_at`` steps are settled (main process)."""
    real_step = ProgressReporter.step
    test_process = os.getppid()

    def step(self: ProgressReporter, record: dict, **kwargs) -> None:
        real_step(self, record, **kwargs)
        if self.enabled and record["step"] + 1 == pause_at:
            _pause(gate, pause_at, test_process)

    ProgressReporter.step = step


def _pause(gate: Path, settled: int, test_process: int) -> None:
    loop_handler = signal.getsignal(signal.SIGTERM)
    got_sigterm: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        got_sigterm.append(signum)
        loop_handler(signum, frame)  # the loop's flag is set before the pause ends

    if callable(loop_handler):
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        gate.mkdir(parents=True, exist_ok=True)
        tmp = gate / "paused.tmp"
        tmp.write_text(str(settled))
        os.replace(tmp, gate / "paused")
        while not got_sigterm:
            if os.getppid() != test_process:  # the test is gone (it failed): do not linger
                os._exit(3)
            time.sleep(0.01)
    finally:
        if callable(loop_handler):
            signal.signal(signal.SIGTERM, loop_handler)


if __name__ == "__main__":
    hold_at(int(sys.argv[1]), Path(sys.argv[2]))
    main(sys.argv[3:])
