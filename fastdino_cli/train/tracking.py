"""Live experiment tracking (``train.trackers``): TensorBoard and, optionally, Weights & Biases.

Why a second log beside ``metrics.jsonl``: a run of days is watched while it trains, next to
other runs, in the tools people already use. ``metrics.jsonl`` stays the source of truth (the
report, resume and every check read it); a tracker receives a copy of the very records
written there, at the same log period (``train.log_period``, plus the first, last and each
stage-start step), from the main process only, and a run resumes whatever the trackers are
(``train.trackers`` is run control, not recipe).

Scalars are grouped by what they tell: ``loss/*`` (total and every term, teacher entropy),
``schedule/*`` (lr, last-layer lr, weight decay, EMA momentum, teacher temperature),
``data/*`` (stage, crop sizes, data wait), ``speed/images_per_s``, ``health/*`` (gradient norms,
non-finite steps in the window, the fp16 loss scale).

The tracker packages are optional extras, imported only when a run asks for them: a missing one
is a one-line error naming the extra to install (``pip install 'fastdino[tracking]'``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastdino_cli.errors import ConfigError
from fastdino_cli.rundir import TENSORBOARD_DIR

TRACKERS = ("tensorboard", "wandb")
_NOT_TRACKED = {"step", "time", "finite", "applied", "stage_name", "noise_patching"}
_GROUPS = {
    "schedule": {"lr", "last_layer_lr", "wd", "momentum", "teacher_temp"},
    "data": {"stage", "global_crops_size", "local_crops_size", "data_wait"},
    "speed": {"images_per_s"},
    "health": {"non_finite", "loss_scale", "bad_steps"},
}


def tag(key: str) -> str:
    """The tracker's name of a record key (``lr`` -> ``schedule/lr``)."""
    if key.startswith("grad_norm_"):
        return f"health/{key}"
    for group, keys in _GROUPS.items():
        if key in keys:
            return f"{group}/{key}"
    return f"loss/{key}"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a metrics record, by tracker tag."""
    out = {}
    for key, value in record.items():
        if key in _NOT_TRACKED or isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            out[tag(key)] = float(value)
    return out


def _missing(name: str, extra: str, error: ImportError) -> ConfigError:
    return ConfigError(
        f"train.trackers lists {name} but it cannot be imported ({error}); install it with "
        f"`pip install 'fastdino[{extra}]'` or remove {name} from train.trackers"
    )


class _TensorBoard:
    def __init__(self, run_dir: Path, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise _missing("tensorboard", "tracking", e) from None
        # purge_step: a resumed run hides the events logged after its checkpoint
        self.writer = SummaryWriter(
            log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=start if start else None
        )

    def log(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "wandb", e) from None
        self.run = wandb.init(
            project="fastdino",
            name=run_dir.name,
            dir=str(run_dir),
            config=config,
            resume="allow",
            id="fastdino-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers (none: every call is a no-op)."""

    def __init__(self, backends: list[Any]) -> None:
        self.backends = backends

    def log(self, record: dict[str, Any]) -> None:
        """Send one metrics record (as written to ``metrics.jsonl``) to every tracker."""
        if not self.backends:
            return
        values = scalars(record)
        for backend in self.backends:
            backend.log(values, int(record["step"]))

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


def open_trackers(
    names: list[str], run_dir: Path, *, start: int, config: dict[str, Any], enabled: bool = True
) -> Trackers:
    """The trackers of ``train.trackers`` for a run (re)starting at step ``start``; none when
    not ``enabled`` (every process but the main one)."""
    if not enabled:
        return Trackers([])
    backends: list[Any] = []
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            backends.append(_TensorBoard(run_dir, start))
        elif name == "wandb":
            backends.append(_Wandb(run_dir, config))
        else:  # the config's Literal refuses it first; a programming error otherwise
            raise ConfigError(f"unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    return Trackers(backends)
