"""``fastdino pretrain --gpus N``: the re-execution under ``accelerate launch`` and its guard."""

from __future__ import annotations

import sys

import pytest
import yaml

from fastdino_cli.train import launch
from fastdino_cli.train.loop import RunResult
from tests.cli_run import run


@pytest.fixture
def no_launcher_env(monkeypatch):
    for key in (launch.GUARD, "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def test_already_launched_reads_the_guard_and_launcher_variables():
    assert not launch.already_launched({})
    assert launch.already_launched({launch.GUARD: "1"})
    assert launch.already_launched({"LOCAL_RANK": "0"})
    assert launch.already_launched({"WORLD_SIZE": "8"})
    assert not launch.already_launched({launch.GUARD: "0"})


def test_written_config_is_a_valid_accelerate_config(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    path = launch.write_accelerate_config(tmp_path / "run", 8)
    assert path == tmp_path / "run" / "accelerate_config.yaml"
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes == 8 and cfg.num_machines == 1
    assert str(cfg.distributed_type.value) == "MULTI_GPU"
    assert yaml.safe_load(path.read_text())["mixed_precision"] == "no"
    with pytest.raises(Exception, match="at least 1"):
        launch.accelerate_config(0)


def test_gpus_reexecutes_under_accelerate_launch_without_gpus(
    tmp_path, monkeypatch, capsys, no_launcher_env
):
    calls = []
    monkeypatch.setattr("torch.cuda.device_count", lambda: 8)
    monkeypatch.setattr(launch.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    out = tmp_path / "run"
    argv = ["pretrain", "--preset", "demo", "--out", str(out), "--gpus", "8", "optim.base_lr=1e-3"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    ((exe, cmd, env),) = calls
    assert exe == sys.executable and env[launch.GUARD] == "1"
    config_path = out / "accelerate_config.yaml"
    assert cmd == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        "-m",
        "fastdino_cli",
        "pretrain",
        "--preset",
        "demo",
        "--out",
        str(out),
        "optim.base_lr=1e-3",
    ]
    assert yaml.safe_load(config_path.read_text())["num_processes"] == 8
    assert "launching" in err and not (out / "config.yaml").exists()


def test_launched_children_train_in_process(tmp_path, monkeypatch, capsys, no_launcher_env):
    """The guard stops recursion: a child that still sees --gpus trains instead of launching."""
    seen = []

    def fake_pretrain(cfg, **kw):
        seen.append(cfg)
        return RunResult(tmp_path, 1, 1, None, "finished")

    monkeypatch.setenv(launch.GUARD, "1")
    monkeypatch.setattr("fastdino_cli.train.loop.pretrain", fake_pretrain)
    monkeypatch.setattr(launch.os, "execve", lambda *a: pytest.fail("launched again"))
    code, out, err = run(["pretrain", "--preset", "demo", "--gpus", "8"], capsys)
    assert code == 0, err
    assert len(seen) == 1 and seen[0].preset == "demo" and "finished" in out


def test_more_gpus_than_present_is_a_one_line_error(tmp_path, monkeypatch, capsys, no_launcher_env):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    code, _, err = run(
        ["pretrain", "--preset", "demo", "--out", str(tmp_path), "--gpus", "4"], capsys
    )
    assert code == 2
    assert err.strip() == (
        "fastdino: error: --gpus 4 asks for 4 GPUs but this machine has 0; lower --gpus "
        "(several machines: see docs/scaling-out.md)"
    )
