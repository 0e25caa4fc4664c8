from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fastdino_cli import checkpoint as ckpt_mod
from fastdino_cli.errors import CheckpointError


def _ckpt(value: float = 1.0, **extra):
    return ckpt_mod.make_checkpoint(
        config={"preset": "demo"},
        arch={"embed_dim": 4, "depth": 1},
        teacher={"backbone.w": torch.full((2, 2), value)},
        **extra,
    )


def test_round_trip(tmp_path):
    state = {"step": 3, "stage": 0, "rng": torch.get_rng_state()}
    c = _ckpt(2.0, student={"backbone.w": torch.ones(2, 2)}, train_state=state)
    p = ckpt_mod.save(c, tmp_path / "a.pt")
    back = ckpt_mod.load(p)
    assert back["format"] == "fastdino" and back["version"] == ckpt_mod.VERSION
    assert torch.equal(back["teacher"]["backbone.w"], torch.full((2, 2), 2.0))
    assert back["train_state"]["step"] == 3
    assert torch.equal(back["train_state"]["rng"], state["rng"])
    assert "probe" not in back
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    p = ckpt_mod.save(_ckpt(1.0), tmp_path / "a.pt")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", boom)
    with pytest.raises(CheckpointError, match="No space left.*previous file is intact"):
        ckpt_mod.save(_ckpt(5.0), p)
    monkeypatch.undo()
    assert torch.equal(ckpt_mod.load(p)["teacher"]["backbone.w"], torch.ones(2, 2))
    assert not list(tmp_path.glob(".*.tmp"))


def test_killed_save_leaves_old_file_loadable(tmp_path):
    """SIGKILL a process in the middle of writing: the old checkpoint must still load."""
    p = tmp_path / "a.pt"
    ckpt_mod.save(_ckpt(1.0), p)
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from fastdino_cli import checkpoint as c
        real_save = torch.save
        def slow_save(obj, f):
            f.write(b"PK" + b"x" * 1000)  # a partial file body
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        c.torch.save = slow_save
        ck = c.make_checkpoint(config={{}}, arch={{}}, teacher={{"w": torch.zeros(3)}})
        c.save(ck, {str(p)!r})
        """
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True)
    assert r.returncode == -9
    assert torch.equal(ckpt_mod.load(p)["teacher"]["backbone.w"], torch.ones(2, 2))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "fastdino", "version": 1, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="arbitrary code"):
        ckpt_mod.load(p)
    assert not marker.exists()
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        ckpt_mod.load(raw)
    assert not marker.exists()


def test_newer_version_foreign_and_truncated(tmp_path):
    c = _ckpt()
    c["version"] = ckpt_mod.VERSION + 1
    torch.save(c, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this fastdino"):
        ckpt_mod.load(tmp_path / "new.pt")
    torch.save({"model": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fastdino checkpoint"):
        ckpt_mod.load(tmp_path / "foreign.pt")
    good = ckpt_mod.save(_ckpt(), tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt_mod.load(tmp_path / "trunc.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError):
        ckpt_mod.load(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_mod.load(tmp_path / "missing.pt")


def test_strict_load_lists_keys():
    m = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing keys \[bias\].*unexpected keys \[extra\]"):
        ckpt_mod.load_state_dict_strict(m, {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="shape mismatches"):
        ckpt_mod.load_state_dict_strict(m, {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)})
    ckpt_mod.load_state_dict_strict(m, {"weight": torch.ones(2, 2), "bias": torch.zeros(2)})
    assert torch.equal(m.weight, torch.ones(2, 2))


def test_inspect(tmp_path):
    p = ckpt_mod.save(_ckpt(train_state={"step": 12, "stage": 1}), tmp_path / "a.pt")
    info = ckpt_mod.inspect(p)
    assert info.step == 12 and info.stage == 1 and info.preset == "demo"
    assert info.entries["train_state"] and not info.entries["student"]
    assert info.num_params["teacher"] == 4


def test_checkpoints_are_readable_by_the_team(tmp_path):
    """Issue 17: not mkstemp's 0600, the mode ``open`` gives (0666 minus the umask)."""
    import stat

    from fastdino_cli.fileio import process_umask

    p = ckpt_mod.save(_ckpt(1.0), tmp_path / "a.pt")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~process_umask()
