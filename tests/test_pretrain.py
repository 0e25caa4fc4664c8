"""End-to-end pretraining on CPU: metrics, checkpoints, exact resume, kill/resume, safety nets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.rundir import RunLocked
from fastdino_cli.train.loop import TrainingDiverged, pretrain

ROOT = Path(__file__).resolve().parents[1]
HEAD = "{n_prototypes: 32, bottleneck_dim: 16, hidden_dim: 32, nlayers: 2}"
STAGES = (
    "[{name: low, end: 0.5, global_crops_size: 16, local_crops_size: 8},"
    " {name: high, end: 1.0, global_crops_size: 24, local_crops_size: 16, restart: true,"
    " warmup_epochs: 0.5, noise_patching: {enabled: true, max_sigma: 0.2}}]"
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_overrides(out, data, epochs=3, extra=()):
    return [
        "model.arch=vit_tiny",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.patch_size=8",
        "model.img_size=16",
        "model.drop_path_rate=0.1",
        f"data.train={data}",
        "data.num_workers=0",
        "crops.local_crops_number=2",
        "crops.global_crops_size=16",
        "crops.local_crops_size=8",
        f"dino.head={HEAD}",
        f"ibot.head={HEAD}",
        f"optim.epochs={epochs}",
        "optim.warmup_epochs=1",
        "optim.freeze_last_layer_epochs=0.5",
        "teacher.warmup_temp_epochs=1",
        "train.epoch_length=2",
        "train.batch_size_per_gpu=4",
        "train.checkpoint_period=1",
        "train.keep_checkpoints=2",
        "train.log_period=1",
        f"train.output_dir={out}",
        f"curriculum.stages={STAGES}",
        *extra,
    ]


def tiny(out, data, **kw):
    return resolve_config(None, None, tiny_overrides(out, data, **kw))


def losses(run_dir):
    keys = ("step", "stage", "loss", "dino_global", "dino_local", "koleo", "ibot", "lr")
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [tuple(json.loads(x)[k] for k in keys) for x in lines]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, demo_data):
    out = tmp_path_factory.mktemp("straight") / "run"
    res = pretrain(tiny(out, demo_data.train), progress=False)
    return out, res


@pytest.mark.slow
def test_run_produces_finite_metrics_and_loadable_checkpoints(straight):
    out, res = straight
    assert res.stopped == "finished" and res.steps_done == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    assert all(r["finite"] and r["loss"] == r["loss"] for r in rows)
    for key in (
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "images_per_s",
        "data_wait",
        "grad_norm_backbone",
        "grad_norm_dino_head",
        "koleo",
        "ibot",
    ):
        assert key in rows[0]
    final = ckpt_io.load(out / "final.pt")
    assert "train_state" not in final and {"teacher", "student", "arch", "config"} <= set(final)
    from fastdino_cli.checkpoint import load_teacher_backbone

    backbone, _ = load_teacher_backbone(out / "final.pt")
    assert backbone(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    latest = ckpt_io.load(out / "checkpoint.pt")
    ts = latest["train_state"]
    assert ts["step"] == 6 and ts["stage"] == 1 and "dino_center" in ts["loss"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000005.pt",
        "step_00000006.pt",
    ]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epoch_length"] == 2
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_stage_switch_in_metrics(straight):
    out, _ = straight
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sizes = [(r["step"], r["stage"], r["global_crops_size"], r["local_crops_size"]) for r in rows]
    assert sizes == [
        (0, 0, 16, 8),
        (1, 0, 16, 8),
        (2, 0, 16, 8),
        (3, 1, 24, 16),
        (4, 1, 24, 16),
        (5, 1, 24, 16),
    ]
    # restart at step 3: warmup from 0, momentum / temperature / wd start over
    assert rows[3]["lr"] == 0.0 and rows[3]["last_layer_lr"] == 0.0
    assert rows[3]["momentum"] == rows[0]["momentum"]
    assert rows[3]["teacher_temp"] == rows[0]["teacher_temp"]
    assert rows[2]["lr"] > 0 and rows[3]["noise_patching"] and not rows[2]["noise_patching"]


@pytest.mark.slow
def test_exact_resume_at_the_stage_boundary(straight, tmp_path, demo_data):
    ref_dir, _ = straight
    out = tmp_path / "resumed"
    first = pretrain(tiny(out, demo_data.train, extra=["train.max_steps=3"]), progress=False)
    assert first.stopped == "max_steps" and first.steps_done == 3
    second = pretrain(tiny(out, demo_data.train), progress=False)  # automatic resume
    assert second.resumed_from == 3 and second.steps_done == 6
    assert losses(out) == losses(ref_dir)
    a, b = ckpt_io.load(ref_dir / "final.pt"), ckpt_io.load(out / "final.pt")
    assert same_weights(a["teacher"], b["teacher"]) and same_weights(a["student"], b["student"])


@pytest.mark.slow
def test_fused_adamw_run_resumes_exactly_and_skips_a_bad_step_on_the_device(
    tmp_path, demo_data, monkeypatch
):
    """The CUDA default (fused AdamW: the skip decided on the device, the host one step behind)
    on the CPU: a NaN loss at step 1 is skipped, and a run split at the stage boundary ends bit
    for bit where the uninterrupted one does."""
    from fastdino_cli.ssl.meta import SSLMetaArch

    real = SSLMetaArch.forward

    def nan_at_step_1(self, batch, *, teacher_temp):
        loss, metrics = real(self, batch, teacher_temp=teacher_temp)
        return (loss * float("nan") if batch.step == 1 else loss), metrics

    from fastdino_cli.train import loop

    saved, save = [], loop._save_resumable

    def recording_save(accelerator, core, optimizer, cfg, run_dir, step_done, *rest, **kw):
        saved.append(step_done)
        return save(accelerator, core, optimizer, cfg, run_dir, step_done, *rest, **kw)

    monkeypatch.setattr(SSLMetaArch, "forward", nan_at_step_1)
    monkeypatch.setattr(loop, "_save_resumable", recording_save)
    fused = ["optim.fused=true"]
    ref, out = tmp_path / "ref", tmp_path / "split"
    with pytest.warns(UserWarning, match="step 1: non-finite loss"):
        pretrain(tiny(ref, demo_data.train, extra=fused), progress=False)
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["finite"] for r in rows] == [True, False, True, True, True, True]
    assert saved == [1, 3, 4, 5, 6]  # every step (checkpoint_period=1) but the skipped one
    with pytest.warns(UserWarning, match="step 1: non-finite loss"):
        pretrain(tiny(out, demo_data.train, extra=[*fused, "train.max_steps=3"]), progress=False)
    pretrain(tiny(out, demo_data.train, extra=fused), progress=False)
    assert losses(out) == losses(ref)
    a, b = ckpt_io.load(ref / "final.pt"), ckpt_io.load(out / "final.pt")
    assert same_weights(a["teacher"], b["teacher"]) and same_weights(a["student"], b["student"])


def test_resume_refuses_another_config_unless_forced(straight, tmp_path, demo_data):
    ref_dir, _ = straight
    with pytest.raises(ConfigError, match=r"optim.base_lr.*--force-config"):
        pretrain(tiny(ref_dir, demo_data.train, extra=["optim.base_lr=0.1"]), progress=False)
    res = pretrain(
        tiny(ref_dir, demo_data.train, extra=["optim.base_lr=0.1"]),
        force_config=True,
        progress=False,
    )
    assert res.stopped == "already-finished"
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(tiny(ref_dir, demo_data.train), resume=False, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        pretrain(tiny(tmp_path / "new", demo_data.train), resume=True, progress=False)


def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path, demo_data):
    out = tmp_path / "locked"
    out.mkdir()
    import socket

    (out / ".lock").write_text(f"{os.getppid()} {socket.gethostname()}")
    with pytest.raises(RunLocked, match="in use"):
        pretrain(tiny(out, demo_data.train, extra=["train.max_steps=1"]), progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid} {socket.gethostname()}")
    res = pretrain(tiny(out, demo_data.train, extra=["train.max_steps=1"]), progress=False)
    assert res.steps_done == 1 and not (out / ".lock").exists()


@pytest.mark.parametrize("fused", ["false", "true"])  # skipped on the host / on the device
def test_non_finite_losses_skip_steps_then_stop(tmp_path, demo_data, monkeypatch, fused):
    from fastdino_cli.ssl.meta import SSLMetaArch

    real = SSLMetaArch.forward

    def nan_forward(self, batch, *, teacher_temp):
        loss, metrics = real(self, batch, teacher_temp=teacher_temp)
        return loss * float("nan"), metrics

    monkeypatch.setattr(SSLMetaArch, "forward", nan_forward)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="2 consecutive non-finite"):
        extra = ["train.max_bad_steps=2", f"optim.fused={fused}"]
        pretrain(tiny(out, demo_data.train, extra=extra), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["finite"] for r in rows] == [False, False]
    assert not (out / "checkpoint.pt").exists()  # no checkpoint of a bad state


def test_unreadable_files_are_skipped_and_counted_in_a_run(tmp_path, demo_data):
    data = tmp_path / "data"
    data.mkdir()
    for i, f in enumerate(sorted(Path(demo_data.train).rglob("*.png"))[:6]):
        Image.open(f).save(data / f"ok_{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "empty.png").write_bytes(b"")
    res = pretrain(tiny(tmp_path / "run", data, extra=["train.max_steps=2"]), progress=False)
    assert sorted(Path(p).name for p in res.skipped_files) == ["broken.jpg", "empty.png"]


def _spawn(cfg_path, gate, pause_at):
    """``fastdino pretrain`` through ``tests/_pausing_pretrain.py``: once ``pause_at`` steps are
    logged it writes ``gate/paused`` and waits for a signal, so it cannot finish first."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(torch.get_num_threads()))
    launcher = [str(ROOT / "tests" / "_pausing_pretrain.py"), str(pause_at), str(gate)]
    return subprocess.Popen(
        [sys.executable, *launcher, "pretrain", "--config", str(cfg_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _write_cfg(path, overrides):
    from fastdino_cli.config import config_to_yaml

    cfg = resolve_config(None, None, overrides)
    path.write_text(config_to_yaml(cfg))
    return cfg


def _wait_for(path, proc, timeout=600):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_continues_from_the_last_checkpoint(tmp_path, demo_data):
    out = tmp_path / "killed"
    over = tiny_overrides(
        out,
        demo_data.train,
        epochs=6,
        extra=["train.checkpoint_period=2", "train.keep_checkpoints=1"],
    )
    cfg = _write_cfg(tmp_path / "cfg.yaml", over)
    proc = _spawn(tmp_path / "cfg.yaml", tmp_path / "gate", pause_at=5)  # never past step 5
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final.pt").exists() and (out / ".lock").exists()  # a stale lock remains
    saved = ckpt_io.load(out / "checkpoint.pt")["train_state"]["step"]
    assert saved % 2 == 0 and saved < 12
    res = pretrain(cfg, progress=False)
    assert res.resumed_from == saved and res.steps_done == 12
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(12))  # lines logged after the checkpoint were replaced
    ref = pretrain(
        resolve_config(None, None, tiny_overrides(tmp_path / "ref", demo_data.train, epochs=6)),
        progress=False,
    )
    assert ref.steps_done == 12
    assert same_weights(
        ckpt_io.load(out / "final.pt")["teacher"],
        ckpt_io.load(tmp_path / "ref" / "final.pt")["teacher"],
    )


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, demo_data):
    out = tmp_path / "term"
    over = tiny_overrides(
        out, demo_data.train, epochs=10, extra=["train.checkpoint_period=100", "train.log_period=1"]
    )
    _write_cfg(tmp_path / "cfg.yaml", over)
    proc = _spawn(tmp_path / "cfg.yaml", tmp_path / "gate", pause_at=1)
    _wait_for(tmp_path / "gate" / "paused", proc)  # waits there until the SIGTERM is handled
    assert (out / "metrics.jsonl").read_text().strip()
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text
    assert "sigterm" in text
    step = ckpt_io.load(out / "checkpoint.pt")["train_state"]["step"]
    assert 1 <= step < 20 and not (out / ".lock").exists()
