"""THE atomic writer: every file fastdino writes goes through ``atomic_write``.

Why one writer: a file that a crash, a full disk or a kill leaves half written must never replace
a good one (a truncated ``results.json``, a 0-byte CSV, a checkpoint cut in the middle). The
recipe: write a temporary file ``.NAME.XXXX.tmp`` in the target's folder, flush, fsync, rename it
over the target (atomic on POSIX), fsync the folder. On any failure the temporary file is
removed and the previous target stays intact.

Details that each hand-rolled copy used to get wrong:

- Permissions: ``mkstemp`` creates files with mode 0600, so teammates on a shared cluster could
  not read checkpoints. The temporary file is chmod-ed to ``0o666 & ~umask``, what ``open``
  would have created. The umask is read once, from ``/proc/self/status`` where the kernel shows
  it (reading it with ``os.umask`` means setting it, which races with other threads creating
  files); elsewhere with ``os.umask`` under a lock, once.
- Errors: whatever ``write`` raises on a full disk surfaces as an ``OSError`` naming the target
  (``torch.save`` turns a failed write into a ``RuntimeError`` whose cause is the ``OSError``;
  pandas and matplotlib re-raise from their own close). ``describe_write_error`` turns ENOSPC,
  EDQUOT and EROFS into the one line the CLI prints.

Streams (a log file being appended to, ``metrics.jsonl``) are not files written at once and are
not written here; rewriting such a stream (truncating ``metrics.jsonl`` on resume) is.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
"""Temporary files are ``.<target name>.<random>.tmp`` beside their target."""

DISK_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "quota exceeded",
    errno.EROFS: "read-only filesystem",
}
"""Errors of the storage rather than of the request: one line, never a traceback."""

_umask_lock = threading.Lock()


@functools.cache
def process_umask() -> int:
    """This process's umask, read once (see the module docstring)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(
    path: str | Path,
    write: Callable[[IO[Any]], Any],
    *,
    text: bool = False,
    durable: bool = True,
) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``.

    The file gets the mode a plain ``open`` would give it (0666 minus the umask). Raises
    ``OSError`` naming ``path`` when the storage fails (the previous ``path`` is intact and no
    temporary file is left); any other exception of ``write`` propagates unchanged.

    ``durable=False`` skips the two fsyncs: for many small files that can be rebuilt (images of
    a generated dataset), where a crash of the process still never leaves a half-written file
    under ``path`` and only a power loss could.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~process_umask())
        except OSError:
            pass  # a filesystem without modes (FAT, some FUSE mounts): keep what it gives
        with os.fdopen(fd, "w" if text else "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        cause = os_error_in(e) if isinstance(e, OSError | RuntimeError) else None
        if cause is None:
            raise
        named = cause.filename is not None and not _is_temp_of(path, cause.filename)
        if cause is e and named:
            raise  # names its file already (e.g. the folder that cannot be created)
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
    return path


def _is_temp_of(path: Path, name: Any) -> bool:
    base = os.path.basename(os.fsdecode(name)) if isinstance(name, str | bytes) else ""
    return base.startswith(f".{path.name}.") and base.endswith(TEMP_SUFFIX)


def write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    return atomic_write(path, lambda f: f.write(text), text=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically."""
    return atomic_write(path, lambda f: f.write(data))


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``fig.savefig(path, ...)``, atomically (the format comes from the file's suffix)."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or (path.suffix.lstrip(".").lower() or "png")
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig_kwargs))


def os_error_in(e: BaseException) -> OSError | None:
    """The ``OSError`` behind ``e`` (itself, its cause or context), if any."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 6:
        if isinstance(cur, OSError):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


def describe_write_error(e: BaseException) -> str | None:
    """One line for a storage failure (disk full, quota, read-only), else None."""
    cause = os_error_in(e)
    if cause is None or cause.errno not in DISK_ERRNOS:
        return None
    what = DISK_ERRNOS[cause.errno]
    where = f" writing {cause.filename}" if cause.filename else ""
    todo = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some of your quota",
        errno.EROFS: "write to a writable location",
    }[cause.errno]
    return (
        f"{what}{where} ({cause.strerror or cause}); the previous file, if any, is intact: "
        f"{todo} and run the same command again"
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every filesystem can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
