"""`fastdino pretrain` / `fastdino plot-metrics` wiring and the metrics figure."""

from __future__ import annotations

import json

import pytest

from fastdino_cli.train.loop import RunResult
from tests.cli_run import run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretrain_forwards_config_and_flags(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(cfg, *, resume=None, force_config=False):
        seen.update(cfg=cfg, resume=resume, force=force_config)
        return RunResult(tmp_path, 3, 500, tmp_path / "final.pt", "max_steps")

    monkeypatch.setattr("fastdino_cli.train.loop.pretrain", fake)
    code, out, _ = run(
        ["pretrain", "--preset", "demo", "--out", str(tmp_path), "optim.base_lr=1e-3"], capsys
    )
    assert code == 0 and "final.pt" in out
    assert seen["cfg"].preset == "demo" and seen["cfg"].optim.base_lr == 1e-3
    assert seen["cfg"].train.output_dir == str(tmp_path)
    assert seen["resume"] is None and seen["force"] is False
    # --resume without a preset reads the run's own config.yaml
    from fastdino_cli.config import config_to_yaml

    (tmp_path / "config.yaml").write_text(config_to_yaml(seen["cfg"]))
    code, _, _ = run(
        ["pretrain", "--out", str(tmp_path), "--resume", "--force-config", "train.max_steps=9"],
        capsys,
    )
    assert code == 0 and seen["resume"] is True and seen["force"] is True
    assert seen["cfg"].optim.base_lr == 1e-3 and seen["cfg"].train.max_steps == 9


def test_an_interrupted_pretrain_says_where_and_how_to_resume(monkeypatch, tmp_path, capsys):
    """Ctrl-C (``stopped="sigint"``): one stderr line with the step and the same command, quoted
    for the shell, and exit 130."""

    def fake(cfg, *, resume=None, force_config=False):
        return RunResult(tmp_path, 7, 500, None, "sigint")

    monkeypatch.setattr("fastdino_cli.train.loop.pretrain", fake)
    out_dir = tmp_path / "my run"
    argv = ["pretrain", "--preset", "demo", "--out", str(out_dir), "curriculum.stages=[{end: 1}]"]
    code, out, err = run(argv, capsys)
    assert code == 130 and out == ""
    assert err == (
        f"fastdino: interrupted at step 7; resume with: fastdino pretrain --preset demo --out "
        f"'{out_dir}' 'curriculum.stages=[{{end: 1}}]'\n"
    )


def test_pretrain_user_errors_are_one_line(tmp_path, capsys):
    code, _, err = run(["pretrain"], capsys)
    assert code == 2 and "--preset" in err and err.count("\n") == 1
    code, _, err = run(
        [
            "pretrain",
            "--preset",
            "demo",
            "data.train=" + str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_plot_metrics_writes_png_with_stage_switch(tmp_path, capsys):
    rows = []
    for step in range(10):
        stage = 0 if step < 6 else 1
        rows.append(
            {
                "step": step,
                "stage": stage,
                "loss": 5 - 0.1 * step,
                "dino_global": 1.0,
                "dino_local": 2.0,
                "ibot": 1.5,
                "koleo": -0.5,
                "lr": 1e-3 * step,
                "momentum": 0.99,
                "global_crops_size": 32 if stage == 0 else 64,
                "local_crops_size": 16 if stage == 0 else 32,
            }
        )
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn")
    from fastdino_cli.figures.training import load_metrics, stage_switches

    df = load_metrics(tmp_path)
    assert len(df) == 10 and stage_switches(df) == [6]
    code, out, _ = run(["plot-metrics", str(tmp_path), "--out", str(tmp_path / "m.png")], capsys)
    assert code == 0
    data = (tmp_path / "m.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    code, _, err = run(["plot-metrics", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("name", ["demo", "demo-dinov2", "vitb16-in1k-dinov2-hires"])
def test_presets_resolve_with_stages(name):
    from fastdino_cli.config import resolve_config
    from fastdino_cli.curriculum import resolve_stages

    cfg = resolve_config(name)
    stages = resolve_stages(cfg.curriculum, cfg.crops)
    assert stages[-1].end == 1.0
    if name == "vitb16-in1k-dinov2-hires":
        assert stages[-1].global_crops_size == 448 and not stages[-1].restart


FAST = [
    "train.batch_size_per_gpu=5",
    "data.num_workers=0",
    "crops.local_crops_number=1",
    "model.depth=1",
]


def test_a_run_is_the_same_run_whatever_the_spelling_of_its_paths(
    tmp_path, demo_data, monkeypatch, capsys
):
    """Issue 17 (5b): `--out demo_out` then `--out "$(pwd)/demo_out"` resumes; a run stores its
    paths absolute; an older run that stored them relative still resumes from elsewhere."""
    import shutil

    import yaml

    from fastdino_cli import checkpoint as ck

    shutil.copytree(demo_data.train, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    base = ["pretrain", "--preset", "demo", *FAST]
    run_dir, data = tmp_path / "demo_out" / "run", tmp_path / "data"
    code, out, err = run(
        [*base, "--out", "demo_out/run", "data.train=data", "train.max_steps=1"], capsys
    )
    assert code == 0, err
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["data"]["train"] == str(data)
    assert stored["train"]["output_dir"] == str(run_dir)
    absolute = [*base, "--out", str(run_dir), f"data.train={data}"]
    code, out, err = run([*absolute, "train.max_steps=2"], capsys)
    assert code == 0 and "max_steps: 2/" in out, err

    # a run written before paths were stored absolute: its files say "data" and "demo_out/run"
    for name in ("checkpoint.pt", "final.pt"):
        ckpt = ck.load(run_dir / name)
        ckpt["config"]["data"]["train"] = "data"
        ckpt["config"]["train"]["output_dir"] = "demo_out/run"
        ck.save(ckpt, run_dir / name)
    stored["data"]["train"], stored["train"]["output_dir"] = "data", "demo_out/run"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(stored))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run([*absolute, "train.max_steps=3"], capsys)
    assert code == 0 and "max_steps: 3/" in out, err
    code, out, err = run(["pretrain", "--out", str(run_dir), "train.max_steps=4"], capsys)
    assert code == 0 and "max_steps: 4/" in out, err  # its own config.yaml, read from here
    other = [*base, "--out", str(run_dir), f"data.train={elsewhere}", "train.max_steps=5"]
    code, out, err = run(other, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"data.train: {str(data)!r} -> {str(elsewhere)!r}" in err, err
