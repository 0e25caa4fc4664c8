"""``data.num_workers: auto``: the cores per local training process, less one, capped; and a
run control key (a run started with a number resumes under ``auto`` and back)."""

from __future__ import annotations

import pytest

from fastdino_cli.config import resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.rundir import RUN_CONTROL_KEYS, check_resume_config
from fastdino_cli.train.loader import AUTO_WORKERS_CAP, available_cores, resolve_num_workers


@pytest.mark.parametrize(
    ("cores", "local", "expected"),
    [
        (2, 1, 1),  # this 2-core machine: one worker, one core for the training process
        (1, 1, 0),  # a single core: load in the training process
        (96, 8, 11),  # 8 GPUs on 96 cores: 12 cores each, one of them trains
        (16, 8, 1),
        (8, 8, 0),
        (256, 1, AUTO_WORKERS_CAP),
    ],
)
def test_auto_shares_the_cores_among_local_processes(cores, local, expected):
    assert resolve_num_workers("auto", cores=cores, local_processes=local) == expected


def test_a_number_is_used_as_it_is_and_auto_reads_the_launch(monkeypatch):
    assert resolve_num_workers(3, cores=1, local_processes=8) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_num_workers("auto", cores=8) == 3
    assert available_cores() >= 1


def test_auto_is_the_default_and_bad_values_are_one_line():
    assert resolve_config("demo-dinov2", None, ["data.num_workers=auto"]).data.num_workers == (
        "auto"
    )
    cfg = resolve_config(None, None, ["data.train=demo"])
    assert cfg.data.num_workers == "auto"
    with pytest.raises(ConfigError, match="data.num_workers: expected auto or a number"):
        resolve_config(None, None, ["data.num_workers=-2"])


def test_a_run_stored_with_a_number_resumes_under_auto(tmp_path):
    assert "data.num_workers" in RUN_CONTROL_KEYS
    old = resolve_config(None, None, ["data.num_workers=2"]).to_dict()
    new = resolve_config(None, None, []).to_dict()
    assert check_resume_config(tmp_path, old, new, force=False) == []
    assert check_resume_config(tmp_path, new, old, force=False) == []
