"""Run by ``tests/test_crash_consistency.py``: the ``fastdino`` CLI with a crash in a save.

Usage: ``python tests/_kill_in_save.py N pretrain ...``. The N-th ``checkpoint.save`` of this
process writes its temporary file completely, truncates it to half, fsyncs it and SIGKILLs the
process before the rename: exactly what a crash in the middle of a checkpoint write leaves. The
fault is injected here, by replacing the ``atomic_write`` that ``checkpoint.save`` calls, so
that the product code holds no test hook.
"""

from __future__ import annotations

import os
import signal
import sys

from fastdino_cli import checkpoint
from fastdino_cli.cli import main

_real_atomic_write = checkpoint.atomic_write
_target = int(sys.argv[1])
_saves = 0


def _dying_atomic_write(path, write, **kwargs):
    global _saves
    _saves += 1
    if _saves != _target:
        return _real_atomic_write(path, write, **kwargs)

    def half_then_die(f) -> None:
        write(f)
        f.flush()
        f.truncate(max(1, f.tell() // 2))
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    return _real_atomic_write(path, half_then_die, **kwargs)


checkpoint.atomic_write = _dying_atomic_write

if __name__ == "__main__":
    main(sys.argv[2:])
