"""The one atomic writer: replace or keep, clean up, umask modes, storage errors in one line."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from fastdino_cli.fileio import atomic_write, describe_write_error


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write(p, lambda f: f.write("one"), text=True)
    assert p.read_text() == "one"

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(p, fail)
    assert p.read_text() == "one"  # the previous file is intact
    assert [x.name for x in p.parent.iterdir()] == ["a.json"]  # no temp file left behind


def test_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    """Teammates on a shared cluster read each other's checkpoints: 0666 minus the umask."""
    from fastdino_cli import fileio

    old = os.umask(0o027)
    fileio.process_umask.cache_clear()
    try:
        assert fileio.process_umask() == 0o027
        p = atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    finally:
        os.umask(old)
        fileio.process_umask.cache_clear()
    p = atomic_write(tmp_path / "b.bin", lambda f: f.write(b"x"))
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~old


def test_a_failed_torch_save_is_an_os_error_naming_the_target(tmp_path):
    """torch's zip writer turns a full disk into a RuntimeError: it surfaces as the OSError."""
    import torch

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    target = tmp_path / "x.pt"
    with pytest.raises(OSError) as e:
        atomic_write(target, lambda f: torch.save({"w": torch.ones(1000)}, Full(f)))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert describe_write_error(e.value) == (
        f"disk full writing {target} (No space left on device); the previous file, if any, is "
        "intact: free some space and run the same command again"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "disk full"),
        (errno.EDQUOT, "quota exceeded"),
        (errno.EROFS, "read-only filesystem"),
        (errno.EIO, None),
    ],
)
def test_storage_errors_are_described_in_one_line(code, words):
    line = describe_write_error(OSError(code, os.strerror(code), "/r/results.json"))
    if words is None:
        assert line is None  # not a storage condition: a bug, shown with its traceback
    else:
        assert line.startswith(f"{words} writing /r/results.json") and "\n" not in line


def test_other_errors_of_the_writer_pass_through_unchanged(tmp_path):
    def bad(f):
        raise ValueError("Format 'xyz' is not supported")

    with pytest.raises(ValueError, match="xyz"):
        atomic_write(tmp_path / "fig.xyz", bad)
    assert list(tmp_path.iterdir()) == []
