from __future__ import annotations

import pytest

from fastdino_cli.fileio import atomic_write


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
