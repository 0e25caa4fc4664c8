"""The run-directory package: names, config diff, the metrics log's one reader and writer,
rotation, what a directory holds (the one rule), the stored config, stored relative paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastdino_cli import rundir as rd
from fastdino_cli.errors import ConfigError


def test_the_names_are_the_layout_the_docs_draw():
    assert (rd.CONFIG, rd.METRICS, rd.CHECKPOINT, rd.FINAL, rd.LOCK) == (
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.pt",
        "final.pt",
        ".lock",
    )
    assert (rd.CHECKPOINTS_DIR, rd.step_copy_name(42)) == ("checkpoints", "step_00000042.pt")
    assert rd.EVAL_DIRS == ("corrupt-eval", "fourier", "gradcam") and rd.PROBE_JSON == "probe.json"
    assert rd.step_of_copy(Path(rd.step_copy_name(1234))) == 1234
    assert rd.step_of_copy(Path("step_x.pt")) is None


def test_the_metrics_log_has_one_writer_and_one_tolerant_reader(tmp_path):
    path = tmp_path / rd.METRICS
    assert rd.read_metrics(path) == [] and rd.last_logged_step(path) is None
    assert rd.last_metrics(path) == {}
    with rd.MetricsWriter(path) as log:
        for step in range(3):
            log.append({"step": step, "loss": 1.0 / (step + 1)})
            assert rd.read_metrics(path)[-1]["step"] == step  # flushed at once
    with path.open("a") as f:  # what a crash leaves: a line cut short, and stray text
        f.write('[1, 2]\n{"no_step": 1}\n{"step": 3, "loss": 0.2')
    assert [r["step"] for r in rd.read_metrics(path)] == [0, 1, 2]
    assert rd.last_logged_step(path) == 2 and rd.last_metrics(path)["loss"] == pytest.approx(1 / 3)
    rd.truncate_metrics(path, 2)  # resuming at step 2: the cut line goes too
    assert path.read_text() == "".join(
        json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(2)
    )
    with rd.MetricsWriter(path) as log:  # appending after it gives whole lines again
        log.append({"step": 2, "loss": 0.0})
    assert [r["step"] for r in rd.read_metrics(path)] == [0, 1, 2]


def test_a_stored_config_that_is_not_a_config_is_one_line_naming_it(tmp_path):
    assert rd.read_stored_config(tmp_path) is None
    path = tmp_path / rd.CONFIG
    path.write_text("train:\n  seed: 3\n")
    assert rd.read_stored_config(tmp_path) == {"train": {"seed": 3}}
    for text, what in (
        ("optim: [unclosed\n", "is not valid YAML"),
        ("", "is empty"),
        ("- a\n- b\n", "holds a list"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match="restore it, or delete it") as e:
            rd.read_stored_config(tmp_path)
        assert str(path) in str(e.value) and what in str(e.value)
        assert "\n" not in str(e.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not a text file"):
        rd.read_stored_config(tmp_path)


def test_a_run_directory_cannot_be_or_be_under_a_file(tmp_path):
    rd.check_run_dir_path(tmp_path / "new" / "run")  # nothing there yet: fine
    rd.check_run_dir_path(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ConfigError, match=f"run directory {afile} is a file, not a folder"):
        rd.check_run_dir_path(afile)
    with pytest.raises(ConfigError, match=f"cannot be created: {afile} is a file"):
        rd.check_run_dir_path(afile / "run")
    assert afile.read_text() == "mine"


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
