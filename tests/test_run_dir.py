"""Run-directory helpers: RNG states as plain data, config diff, metrics truncation, rotation."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from fastdino_cli import rundir as rd


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
