"""Live tracking: ``train.trackers: [tensorboard]`` mirrors ``metrics.jsonl`` into TensorBoard
event files (read back here with TensorBoard's own reader); a missing package is one line."""

from __future__ import annotations

import json
import sys

import pytest

from fastdino_cli import rundir as rd
from fastdino_cli.errors import ConfigError
from fastdino_cli.train.loop import pretrain
from fastdino_cli.train.tracking import open_trackers, scalars, tag
from tests.test_pretrain import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED_TAGS = {
    "loss/loss",
    "loss/dino_global",
    "loss/dino_local",
    "loss/ibot",
    "loss/koleo",
    "loss/teacher_entropy",
    "schedule/lr",
    "schedule/wd",
    "schedule/momentum",
    "schedule/teacher_temp",
    "data/global_crops_size",
    "data/stage",
    "speed/images_per_s",
    "health/non_finite",
    "health/grad_norm_backbone",
}


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tags_group_the_record_and_skip_flags_and_text():
    assert tag("lr") == "schedule/lr" and tag("grad_norm_backbone") == "health/grad_norm_backbone"
    assert (
        tag("dino_local") == "loss/dino_local"
        and tag("global_crops_size") == "data/global_crops_size"
    )
    record = {"step": 3, "loss": 1.5, "finite": True, "stage_name": "low", "stage": 0, "x": None}
    assert scalars(record) == {"loss/loss": 1.5, "data/stage": 0.0}


@pytest.mark.slow
def test_a_run_with_tensorboard_writes_the_metrics_records(tmp_path, demo_data):
    out = tmp_path / "run"
    cfg = tiny(out, demo_data.train, epochs=2, extra=["train.trackers=[tensorboard]"])
    pretrain(cfg, progress=False)
    rows = rd.read_metrics(out / rd.METRICS)
    events = _events(out / rd.TENSORBOARD_DIR)
    assert set(events) >= EXPECTED_TAGS
    for name in ("loss/loss", "schedule/lr", "loss/ibot", "data/global_crops_size"):
        key = name.split("/")[1]
        got = events[name]
        assert [s for s, _ in got] == [r["step"] for r in rows]
        for (_, value), row in zip(got, rows, strict=True):
            assert value == pytest.approx(row[key], rel=1e-6)  # float32 in the event file
    assert [v for _, v in events["data/stage"]] == [0, 0, 1, 1]
    assert all(v == 0 for _, v in events["health/non_finite"])


def test_trackers_only_on_the_main_process_and_a_missing_package_is_one_line(tmp_path, monkeypatch):
    assert (
        open_trackers(["tensorboard"], tmp_path, start=0, config={}, enabled=False).backends == []
    )
    assert not (tmp_path / rd.TENSORBOARD_DIR).exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'fastdino\[tracking\]'") as e:
        open_trackers(["tensorboard"], tmp_path, start=0, config={})
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install 'fastdino\[wandb\]'"):
        open_trackers(["wandb"], tmp_path, start=0, config={})


def test_trackers_are_run_control_a_run_resumes_with_other_trackers(tmp_path, demo_data):
    out = tmp_path / "run"
    pretrain(tiny(out, demo_data.train, epochs=2, extra=["train.max_steps=1"]), progress=False)
    cfg = tiny(out, demo_data.train, epochs=2, extra=["train.trackers=[tensorboard]"])
    res = pretrain(cfg, progress=False)
    assert res.resumed_from == 1
    events = _events(out / rd.TENSORBOARD_DIR)
    assert [s for s, _ in events["loss/loss"]] == [1, 2, 3]
    assert json.loads((out / rd.METRICS).read_text().splitlines()[-1])["step"] == 3
