"""``RUN_DIR/.lock``: one training process per run directory, for the life of the run.

Two processes on the same directory refuse through ``RunLock`` (an ``flock`` on ``.lock``, whose
content names the owner's PID, host and process start time); a lock left by a dead process is
taken over, atomically. The owner touches the lock every ``HEARTBEAT_S``; a lock written on
another host (a pre-empted job restarted elsewhere on a shared filesystem) is stale once its
heartbeat is older than ``FOREIGN_STALE_S``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
from pathlib import Path

from fastdino_cli.errors import FastdinoError
from fastdino_cli.rundir.layout import LOCK


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
        self.path = Path(run_dir) / LOCK
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


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
