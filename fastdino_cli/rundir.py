"""The run directory: lock, resume decision, config check, metrics log, checkpoint rotation, RNG.

A run directory is never overwritten: when it already holds a run, ``pretrain`` resumes it (and
refuses a different config unless forced). Two processes on the same directory refuse through a
lock file holding the owner's PID, host and process start time; a lock left by a dead process is
taken over (a recycled PID does not fool it: the start time differs). The owner touches the lock
every ``HEARTBEAT_S``; a lock written on another host (a pre-empted job restarted elsewhere on a
shared filesystem) is stale once its heartbeat is older than ``FOREIGN_STALE_S``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fastdino_cli.errors import ConfigError, FastdinoError

# Keys that change how a run is driven, not what it computes: they may differ on resume.
RUN_CONTROL_KEYS = (
    "preset",
    "description",
    "train.max_steps",
    "train.output_dir",
    "train.log_period",
    "train.checkpoint_period",
    "train.keep_checkpoints",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
)


class RunLocked(FastdinoError):
    """Another live process is training in the same run directory."""


class RunLock:
    """``RUN_DIR/.lock`` holding ``pid host start_time``; stale locks are taken over."""

    HEARTBEAT_S = 30.0
    FOREIGN_STALE_S = 300.0

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self._stop = threading.Event()

    def __enter__(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}"
        for _ in range(3):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._live_owner()
                if owner:
                    raise RunLocked(
                        f"{self.path.parent} is in use by another fastdino process ({owner}); "
                        f"wait for it or choose another --out (delete {self.path} only if no "
                        "run is active)"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            except OSError as e:
                raise RunLocked(
                    f"cannot write to the run directory {self.path.parent} "
                    f"({e.strerror or e}); make it writable or choose another --out"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            threading.Thread(target=self._heartbeat, daemon=True, name="run-lock").start()
            return self
        raise RunLocked(f"could not take the lock {self.path}; remove it if no run is active")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def _live_owner(self) -> str | None:
        """A description of the lock's owner when it may still be running, else None."""
        try:
            text = self.path.read_text().strip()
            age = time.time() - self.path.stat().st_mtime
            pid_s, host, started = (text.split() + ["", "", ""])[:3]
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        if host and host != socket.gethostname():  # cannot see that process: trust its heartbeat
            if age > self.FOREIGN_STALE_S:
                return None
            return f"pid {pid} on host {host}, lock touched {age:.0f} s ago"
        if pid == os.getpid():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return f"pid {pid}"
        if not _not_zombie(pid) or (started and started != _start_time(pid)):
            return None  # dead, or the PID now belongs to another process
        return f"pid {pid}"

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _start_time(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' where /proc is not available)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return ""


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temp files a killed process left half-written (call only while holding the lock)."""
    run_dir = Path(run_dir)
    for pattern in (".*.pt.*.tmp", "checkpoints/.step_*.pt.tmp", "metrics.tmp"):
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every computation-relevant key that differs."""
    a, b = flatten(old), flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RUN_CONTROL_KEYS:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def check_resume_config(run_dir: Path, old: dict[str, Any], new: dict[str, Any], force: bool):
    diffs = config_differences(old, new)
    if diffs and not force:
        shown = "; ".join(diffs[:3]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 3 else "")
        raise ConfigError(
            f"the config differs from the run in {run_dir} ({shown}); resume with the same "
            "config, pass --force-config to resume anyway, or choose another --out"
        )
    return diffs


def load_config_yaml_dict(path: Path) -> dict[str, Any]:
    """A run's stored ``config.yaml`` as plain data (a damaged file reads as empty)."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def truncate_metrics(path: Path, keep_before_step: int) -> None:
    """Drop logged lines of iterations that the resumed checkpoint does not include."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) < keep_before_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in kept))
    os.replace(tmp, path)


def rotate_checkpoint(run_dir: Path, latest: Path, step: int, keep: int) -> None:
    """Copy ``latest`` to ``checkpoints/step_XXXXXXXX.pt`` and keep the newest ``keep``."""
    if keep <= 0:
        return
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    target = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{target.name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(latest, tmp)
    except OSError:
        shutil.copy2(latest, tmp)
    os.replace(tmp, target)
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# RNG states as plain data
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy global and python ``random`` states as plain data."""
    np_state = np.random.get_state(legacy=False)
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
