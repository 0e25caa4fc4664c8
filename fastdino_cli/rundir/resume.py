"""What a run directory holds, and so what ``pretrain`` may do in it: THE "finished or not" rule.

A run directory is never overwritten: when it holds a run, ``pretrain`` resumes it (and refuses
a different config unless forced, ``rundir.stored_config``); a run that cannot be resumed
(finished or broken) is reported, never restarted over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastdino_cli.errors import FastdinoError
from fastdino_cli.rundir.layout import (
    CHECKPOINT,
    CHECKPOINTS_DIR,
    CONFIG,
    FINAL,
    METRICS,
    step_copies,
    step_of_copy,
)
from fastdino_cli.rundir.metrics import last_logged_step


class NotResumable(FastdinoError):
    """A run directory that holds a finished or broken run without a checkpoint to resume."""


@dataclass(frozen=True)
class RunDirState:
    """What a run directory holds, as far as starting ``pretrain`` in it is concerned."""

    kind: Literal["empty", "resumable", "finished", "broken"]
    """``empty``: nothing to resume and nothing to lose: a new folder, or a run that died
    before its first checkpoint was due (starting again recomputes exactly its logged steps);
    ``resumable``: ``checkpoint.pt`` is there; ``finished`` / ``broken``: ``final.pt``, or
    logged steps past a checkpoint, but no ``checkpoint.pt``: never restarted over."""
    run_dir: Path
    holds_run: bool
    """Anything of a run is there (a config, a checkpoint, a log)."""
    last_logged_step: int | None = None
    copies: tuple[Path, ...] = ()
    """``checkpoints/step_*.pt``, oldest first."""

    def refusal(self) -> str:
        """The one line for a finished or broken run: what is there, what to do."""
        found = [n for n in (FINAL, CONFIG) if (self.run_dir / n).is_file()]
        if self.last_logged_step is not None:
            found.append(f"{METRICS} up to step {self.last_logged_step}")
        if self.copies:
            found.append(f"{len(self.copies)} file(s) in {CHECKPOINTS_DIR}/")
        what = "a finished run" if self.kind == "finished" else "a run"
        todo = "choose another --out"
        if self.copies:
            step = step_of_copy(self.copies[-1])
            todo += (
                f", or copy {self.copies[-1]} to {self.run_dir / CHECKPOINT} to resume "
                f"from step {step}"
                if step is not None
                else ""
            )
        return (
            f"{self.run_dir} holds {what} ({', '.join(found)}) but no {CHECKPOINT} to resume "
            f"from; fastdino never restarts over it: {todo}"
        )


def classify_run_dir(run_dir: Path, checkpoint_periods: tuple[int, ...] = ()) -> RunDirState:
    """THE rule of what ``pretrain`` may do in ``run_dir`` (see ``RunDirState.kind``).

    ``checkpoint_periods``: ``train.checkpoint_period`` of the new config and of the stored
    one; a logged step at or past the smallest means a checkpoint was written and is gone.
    """
    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINT
    copies = step_copies(run_dir)
    last = last_logged_step(run_dir / METRICS)
    final = (run_dir / FINAL).exists()
    holds = latest.exists() or final or last is not None or (run_dir / CONFIG).exists()
    state = {"run_dir": run_dir, "holds_run": holds, "last_logged_step": last, "copies": copies}
    if latest.exists():
        return RunDirState("resumable", **state)
    if final:
        return RunDirState("finished", **state)
    period = min(checkpoint_periods, default=1)
    # the checkpoint of step ``period`` is written before step ``period`` is logged
    if copies or (last is not None and last >= period):
        return RunDirState("broken", **state)
    return RunDirState("empty", **state)
