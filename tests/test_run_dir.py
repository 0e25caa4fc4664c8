"""Run-directory helpers: RNG states as plain data, config diff, metrics truncation, rotation,
what a directory holds (the one rule), stored relative paths."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdino_cli import rundir as rd
from fastdino_cli.errors import ConfigError


def test_rng_state_round_trips_through_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rd.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    rd.set_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_config_differences_ignore_run_control_keys():
    old = {"optim": {"base_lr": 1.0}, "train": {"max_steps": 3, "log_period": 1}}
    new = {"optim": {"base_lr": 2.0}, "train": {"max_steps": None, "log_period": 5}}
    assert rd.config_differences(old, new) == ["optim.base_lr: 1.0 -> 2.0"]


def test_truncate_metrics_and_rotation(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(6)) + '{"step": 6, "lo')
    rd.truncate_metrics(m, 4)
    assert [json.loads(x)["step"] for x in m.read_text().splitlines()] == [0, 1, 2, 3]
    latest = tmp_path / "checkpoint.pt"
    for step in (2, 4, 6):
        (tmp_path / "new").write_text(f"step {step}")
        (tmp_path / "new").replace(latest)  # checkpoint.save replaces atomically, too
        rd.rotate_checkpoint(tmp_path, latest, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000004.pt", "step_00000006.pt"]
    assert (tmp_path / "checkpoints" / "step_00000004.pt").read_text() == "step 4"


def _log(run: Path, steps) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))


def test_classify_run_dir_is_the_one_rule(tmp_path):
    """Empty / resumable / finished / broken: never restart over anything not recomputable."""
    run = tmp_path / "run"
    assert rd.classify_run_dir(run).kind == "empty" and not rd.classify_run_dir(run).holds_run
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    state = rd.classify_run_dir(run, (4,))
    assert state.kind == "empty" and state.holds_run
    # killed before its first checkpoint (period 4): steps 0-3 logged, the save of step 4 cut
    _log(run, range(4))
    assert rd.classify_run_dir(run, (4,)).kind == "empty"  # a restart recomputes them exactly
    # a logged step 4 means the checkpoint of step 4 was written: it is gone
    _log(run, range(5))
    state = rd.classify_run_dir(run, (4,))
    assert state.kind == "broken" and state.last_logged_step == 4
    assert rd.classify_run_dir(run, (10, 4)).kind == "broken"  # the smaller period counts
    assert "choose another --out" in state.refusal() and str(run) in state.refusal()
    # a periodic copy: the refusal says how to resume from it, without doing it
    (run / "checkpoints" / "step_00000004.pt").write_bytes(b"x")
    _log(run, range(2))
    state = rd.classify_run_dir(run, (4,))
    assert state.kind == "broken"
    assert (
        f"copy {run / 'checkpoints' / 'step_00000004.pt'} to {run / 'checkpoint.pt'} to resume "
        "from step 4" in state.refusal()
    )
    (run / "final.pt").write_bytes(b"x")
    state = rd.classify_run_dir(run, (4,))
    assert state.kind == "finished" and "holds a finished run (final.pt" in state.refusal()
    assert "\n" not in state.refusal()
    (run / "checkpoint.pt").write_bytes(b"x")
    assert rd.classify_run_dir(run, (4,)).kind == "resumable"


def test_stored_relative_paths_are_relative_to_where_the_run_started(tmp_path, monkeypatch):
    """An old run stored what was typed; the directory it started from is recovered from its
    relative output_dir, wherever it is resumed from."""
    home = tmp_path / "home"
    run = home / "demo_out" / "runs" / "x"
    stored = {
        "data": {"train": "demo_out/data/train"},
        "train": {"output_dir": "demo_out/runs/x", "log_period": 1},
    }
    monkeypatch.chdir(tmp_path)  # somewhere else
    assert rd.stored_path_bases(run, stored) == [home]
    resolved = rd.resolve_stored_paths(run, stored)
    assert resolved["data"]["train"] == str(home / "demo_out" / "data" / "train")
    assert stored["data"]["train"] == "demo_out/data/train"  # the input is not changed
    new = {
        "data": {"train": str(home / "demo_out" / "data" / "train")},
        "train": {"output_dir": str(run), "log_period": 1},
    }
    assert rd.check_resume_config(run, stored, new, force=False) == []
    other = {**new, "data": {"train": str(tmp_path / "demo_out" / "data" / "train")}}
    with pytest.raises(ConfigError, match="data.train: 'demo_out/data/train' -> "):
        rd.check_resume_config(run, stored, other, force=False)
    # an absolute output dir says nothing about where the run started: here or its parent
    stored_abs = {**stored, "train": {"output_dir": str(run)}}
    assert rd.stored_path_bases(run, stored_abs) == [tmp_path, run.parent]
    # the keyword `demo` is not a path
    demo = {"data": {"train": "demo"}, "train": {"output_dir": "demo_out/runs/x"}}
    assert rd.resolve_stored_paths(run, demo)["data"]["train"] == "demo"
    assert rd.check_resume_config(run, demo, demo, force=False) == []


def test_remove_partial_writes_removes_the_atomic_writers_temp_files(tmp_path):
    keep = [tmp_path / "checkpoint.pt", tmp_path / "metrics.jsonl", tmp_path / "notes.tmp"]
    gone = [
        tmp_path / ".checkpoint.pt.ab12cd.tmp",
        tmp_path / ".config.yaml.x1.tmp",
        tmp_path / ".metrics.jsonl.q.tmp",
        tmp_path / "checkpoints" / ".step_00000004.pt.zz.tmp",
        tmp_path / "checkpoints" / ".step_00000004.pt.link.tmp",
    ]
    for p in keep + gone:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    rd.remove_partial_writes(tmp_path)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
