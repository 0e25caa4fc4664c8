"""The run directory: lock, resume decision, config check, metrics log, checkpoint rotation, RNG.

A run directory is never overwritten: when it already holds a run, ``pretrain`` resumes it (and
refuses a different config unless forced); a run that cannot be resumed (finished or broken,
``classify_run_dir``) is reported, never restarted over. Two processes on the same directory
refuse through ``RunLock`` (an ``flock`` on ``.lock``, whose content names the owner's PID, host
and process start time); a lock left by a dead process is taken over, atomically. The owner
touches the lock every ``HEARTBEAT_S``; a lock written on another host (a pre-empted job
restarted elsewhere on a shared filesystem) is stale once its heartbeat is older than
``FOREIGN_STALE_S``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from fastdino_cli.config import DEMO_DATA_ALIAS, PATH_KEYS, absolute_path, deep_merge
from fastdino_cli.errors import ConfigError, FastdinoError
from fastdino_cli.fileio import TEMP_SUFFIX, atomic_write, write_text

# --------------------------------------------------------------------------------------------
# The layout: every file and folder name of a run directory, defined here and nowhere else
# --------------------------------------------------------------------------------------------

CONFIG = "config.yaml"
"""The resolved config the run was started with (absolute paths)."""
METRICS = "metrics.jsonl"
"""One JSON record per logged step (the source of truth for curves and reports)."""
CHECKPOINT = "checkpoint.pt"
"""The latest resumable checkpoint (with ``train_state``)."""
CHECKPOINTS_DIR = "checkpoints"
"""Rotated copies ``checkpoints/step_XXXXXXXX.pt`` (``train.keep_checkpoints``)."""
FINAL = "final.pt"
"""The finished model (no ``train_state``); what every evaluation reads by default."""
LOCK = ".lock"
"""Held (``flock``) by the one process training in the directory."""
PROBE_JSON = "probe.json"
"""``fastdino probe``'s results for the run's final checkpoint."""
CORRUPT_DIR = "corrupt-eval"
"""``fastdino corrupt-eval``'s outputs."""
FOURIER_DIR = "fourier"
"""``fastdino fourier-heatmap``'s outputs."""
GRADCAM_DIR = "gradcam"
"""``fastdino gradcam``'s outputs."""
EVAL_DIRS = (CORRUPT_DIR, FOURIER_DIR, GRADCAM_DIR)


def step_copy_name(step: int) -> str:
    """File name of the rotated checkpoint of ``step`` inside ``CHECKPOINTS_DIR``."""
    return f"step_{step:08d}.pt"


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


_HELD_FDS: set[int] = set()
"""Descriptors of the locks this process holds (closed in forked children, see ``RunLock``)."""


def _close_held_locks_in_child() -> None:
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
"""``flock`` errors of a filesystem that does not support it."""


class RunLock:
    """``RUN_DIR/.lock``: one process per run directory, for the life of the run.

    The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the open lock file, held until the run
    ends. The kernel grants it to exactly one open file at a time and releases it when its
    holder dies, however it dies, so two processes racing for a lock left by a dead one cannot
    both win (the previous design, "inspect the stale file, unlink it, create a new one with
    O_EXCL", let both inspect before either replaced it). Details:

    - the file may be replaced between our ``open`` and our ``flock`` (its owner unlinks it on
      release, while still holding its flock): after locking, the descriptor must still be the
      file at ``.lock`` (same device and inode), else we try again with the new file;
    - the file holds ``pid host start_time``, for the messages, and because ``flock`` is not
      honoured everywhere: where it is not (some shared filesystems, or honoured on one host
      only), the content decides as before: a live owner on this host (same PID and process
      start time: a recycled PID does not fool it), or a foreign host's lock whose heartbeat
      (the file's mtime, touched every ``HEARTBEAT_S``) is younger than ``FOREIGN_STALE_S``,
      is respected even though we obtained the flock; a dead owner's lock is taken over;
    - data-loader workers are forked while the lock is held and would inherit the descriptor,
      keeping the lock of a killed trainer alive: forked children close it at once;
    - a failure to create or write the file (read-only, disk full) is one ``RunLocked`` line
      and leaves no file behind.

    On a filesystem without ``flock`` at all the content rule alone decides (the race of two
    simultaneous takeovers is then not excluded).
    """

    HEARTBEAT_S = 30.0
    FOREIGN_STALE_S = 300.0

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self._fd: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}"
        for _ in range(5):
            fd = self._open()
            keep = False
            try:
                if not _flock(fd):  # held: its content may still be the stale one it replaces
                    owner = self._live_owner(fd) or "it is taking over a stale lock"
                    raise self._in_use(owner)
                if not _same_file(fd, self.path):
                    continue  # released and removed after our open: lock the new file
                owner = self._live_owner(fd)
                if owner:
                    raise self._in_use(owner)
                self._write(fd, me)
                keep = True
            finally:
                if not keep:
                    os.close(fd)
            self._fd, self.held = fd, True
            _HELD_FDS.add(fd)
            self._stop.clear()
            threading.Thread(target=self._heartbeat, daemon=True, name="run-lock").start()
            return self
        raise RunLocked(f"could not take the lock {self.path}; remove it if no run is active")

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise self._cannot_write(e) from None

    def _write(self, fd: int, text: str) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode(), 0)
        except OSError as e:  # disk full, quota: leave no empty lock behind
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
            raise self._cannot_write(e) from None

    def _cannot_write(self, e: OSError) -> RunLocked:
        return RunLocked(
            f"cannot write the lock file {self.path} ({e.strerror or e}); make the run "
            f"directory {self.path.parent} writable, free space, or choose another --out"
        )

    def _in_use(self, owner: str) -> RunLocked:
        return RunLocked(
            f"{self.path.parent} is in use by another fastdino process ({owner}); "
            f"wait for it or choose another --out (delete {self.path} only if no run is active)"
        )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                if self._fd is not None:
                    os.utime(self._fd)
            except OSError:
                pass

    def _live_owner(self, fd: int) -> str | None:
        """The owner the content names when it may still be running, else None. Asked when we
        hold the flock (a foreign host with a fresh heartbeat, an older fastdino that did not
        flock) and, for the message, when another process holds it."""
        try:
            pid_s, host, started = (_read(fd).split() + ["", "", ""])[:3]
            pid = int(pid_s)
        except ValueError:
            return None
        age = _mtime_age(fd)
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
        if self.held and self._fd is not None:
            fd, self._fd, self.held = self._fd, None, False
            _HELD_FDS.discard(fd)
            try:
                if _same_file(fd, self.path):  # unlink while still locked: see the docstring
                    self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)


def _flock(fd: int) -> bool:
    """Take the exclusive flock without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _mtime_age(fd: int) -> float:
    try:
        return time.time() - os.fstat(fd).st_mtime
    except OSError:
        return 0.0


def _start_time(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' where /proc is not available)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return ""


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temp files a killed process left half-written (call only while holding the lock):
    ``fileio.atomic_write``'s ``.NAME.XXXX.tmp`` beside the run's files and its checkpoints."""
    run_dir = Path(run_dir)
    for pattern in (f".*{TEMP_SUFFIX}", f"checkpoints/.*{TEMP_SUFFIX}"):
        for path in run_dir.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


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
        found = [n for n in ("final.pt", "config.yaml") if (self.run_dir / n).is_file()]
        if self.last_logged_step is not None:
            found.append(f"metrics.jsonl up to step {self.last_logged_step}")
        if self.copies:
            found.append(f"{len(self.copies)} file(s) in checkpoints/")
        what = "a finished run" if self.kind == "finished" else "a run"
        todo = "choose another --out"
        if self.copies:
            step = _step_of(self.copies[-1])
            todo += (
                f", or copy {self.copies[-1]} to {self.run_dir / 'checkpoint.pt'} to resume "
                f"from step {step}"
                if step is not None
                else ""
            )
        return (
            f"{self.run_dir} holds {what} ({', '.join(found)}) but no checkpoint.pt to resume "
            f"from; fastdino never restarts over it: {todo}"
        )


def classify_run_dir(run_dir: Path, checkpoint_periods: tuple[int, ...] = ()) -> RunDirState:
    """THE rule of what ``pretrain`` may do in ``run_dir`` (see ``RunDirState.kind``).

    ``checkpoint_periods``: ``train.checkpoint_period`` of the new config and of the stored
    one; a logged step at or past the smallest means a checkpoint was written and is gone.
    """
    run_dir = Path(run_dir)
    latest = run_dir / "checkpoint.pt"
    copies = tuple(sorted((run_dir / "checkpoints").glob("step_*.pt")))
    last = _last_logged_step(run_dir / "metrics.jsonl")
    final = (run_dir / "final.pt").exists()
    holds = latest.exists() or final or last is not None or (run_dir / "config.yaml").exists()
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


def _last_logged_step(path: Path) -> int | None:
    """The highest step in ``metrics.jsonl`` (None: no file, or no complete line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    steps = []
    for line in lines:
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut by a crash
        if isinstance(step, int):
            steps.append(step)
    return max(steps, default=None)


def _step_of(copy: Path) -> int | None:
    try:
        return int(copy.stem.removeprefix("step_"))
    except ValueError:
        return None


def stored_path_bases(run_dir: Path, stored: dict[str, Any]) -> list[Path]:
    """The directories a stored config's relative paths may be relative to.

    Runs store absolute paths now (``config.with_absolute_paths``); older runs stored what was
    typed, relative to the directory the run was first started from. That directory is
    recovered from the stored relative ``train.output_dir``: the run directory's absolute path
    with it removed from the end (``/home/me`` for ``demo_out/runs/x`` at
    ``/home/me/demo_out/runs/x``). Where that is not possible (an absolute or ``..`` output
    dir), the current directory and the run directory's parent are both candidates.
    """
    out = flatten(stored).get("train.output_dir")
    here = Path(os.path.abspath(run_dir))
    if isinstance(out, str) and out and not os.path.isabs(os.path.expanduser(out)):
        parts = Path(os.path.normpath(out)).parts
        if ".." not in parts and here.parts[-len(parts) :] == parts:
            return [Path(*here.parts[: -len(parts)])]
    return [Path.cwd(), here.parent]


def resolve_stored_paths(run_dir: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config (plain data) with its relative paths made absolute against the first
    of ``stored_path_bases``: the config an old run dir means, from wherever it is resumed."""
    base = stored_path_bases(run_dir, stored)[0]
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = (out.get(section) or {}).get(name)
        if isinstance(value, str) and value and value != DEMO_DATA_ALIAS:
            out[section][name] = absolute_path(value, base)
    return out


def _same_stored_path(run_dir: Path, stored: dict[str, Any], old: Any, new: Any) -> bool:
    """Whether a stored path value and a new one name the same place (see
    ``stored_path_bases``; links resolved, so a path through a symlink matches too)."""
    if not (isinstance(old, str) and isinstance(new, str)) or DEMO_DATA_ALIAS in (old, new):
        return old == new
    target = os.path.realpath(absolute_path(new, Path.cwd()))
    return any(
        os.path.realpath(absolute_path(old, base)) == target
        for base in stored_path_bases(run_dir, stored)
    )


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
    """Refuse (``ConfigError``) to resume a run with another config unless ``force``; paths
    are compared as places, not spellings (``_same_stored_path``)."""
    flat_old, flat_new = flatten(old), flatten(new)
    same = [
        k
        for k in PATH_KEYS
        if k in flat_old and _same_stored_path(run_dir, old, flat_old[k], flat_new.get(k))
    ]
    if same:
        old = deep_merge(old, {})
        for key in same:
            section, name = key.split(".")
            old[section][name] = flat_new.get(key)
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
    write_text(path, "".join(x + "\n" for x in kept))


def rotate_checkpoint(run_dir: Path, latest: Path, step: int, keep: int) -> None:
    """Copy ``latest`` to ``checkpoints/step_XXXXXXXX.pt`` and keep the newest ``keep``.

    A hard link where the filesystem has them (no bytes copied: ``latest`` is replaced by the
    next save, never rewritten in place), linked under a temporary name and renamed so that an
    existing ``step_*.pt`` is replaced atomically; else a copy through ``atomic_write``.
    """
    if keep <= 0:
        return
    folder = run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    target = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{target.name}.link{TEMP_SUFFIX}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(latest, tmp)
    except OSError:
        with open(latest, "rb") as src:
            atomic_write(target, lambda f: shutil.copyfileobj(src, f, 1 << 24))
    else:
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
