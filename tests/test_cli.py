from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from fastdino_cli import checkpoint as ckpt_mod
from fastdino_cli.cli import main
from fastdino_cli.config import load_config_yaml, resolve_config
from tests.cli_run import run

SUBCOMMANDS = (
    "pretrain",
    "probe",
    "corrupt-eval",
    "fourier-heatmap",
    "gradcam",
    "presets",
    "checkpoint",
    "data",
    "curate",
)


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out


def test_presets_list_and_show_round_trip(capsys):
    code, out, _ = run(["presets", "list"], capsys)
    assert code == 0 and "vitb16-in1k-dinov2" in out and "FastDINOv2" in out
    code, out, _ = run(["presets", "show", "demo", "optim.base_lr=1e-3"], capsys)
    assert code == 0
    cfg = load_config_yaml(out)
    assert cfg.optim.base_lr == 1e-3
    assert cfg == resolve_config("demo", overrides=["optim.base_lr=1e-3"])
    assert yaml.safe_load(out)["preset"] == "demo"


def test_user_errors_are_one_line_exit_2(capsys):
    code, out, err = run(["presets", "show", "demo", "optim.base_rl=1"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "did you mean 'optim.base_lr'" in err and "Traceback" not in err


def test_debug_shows_the_traceback(capsys):
    from fastdino_cli.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "presets", "show", "nope"])


def test_checkpoint_info(tmp_path, capsys):
    p = ckpt_mod.save(
        ckpt_mod.make_checkpoint(
            config={"preset": "demo"},
            arch={"embed_dim": 8},
            teacher={"backbone.w": torch.zeros(4)},
            train_state={"step": 5, "stage": 0},
        ),
        tmp_path / "x.pt",
    )
    code, out, _ = run(["checkpoint", "info", str(p)], capsys)
    assert code == 0 and f"fastdino v{ckpt_mod.VERSION}" in out and "demo" in out
    assert "train_state" in out
    code, _, err = run(["checkpoint", "info", str(tmp_path / "nope.pt")], capsys)
    assert code == 2 and "nope.pt does not exist" in err


def test_data_demo(tmp_path, capsys):
    args = ["data", "demo", str(tmp_path / "d"), "--size", "16"]
    args += ["--train-per-class", "2", "--val-per-class", "1"]
    code, out, _ = run(args, capsys)
    assert code == 0 and "built" in out and "10 classes" in out
    code, out, _ = run(args, capsys)
    assert code == 0 and "reused" in out


def test_python_dash_m_entry_point():
    r = subprocess.run(
        [sys.executable, "-m", "fastdino_cli", "presets", "list"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "demo" in r.stdout
