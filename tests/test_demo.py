"""The demo end to end at toy scale: every step runs, the report is filled, a re-run reuses."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from fastdino_cli.report.steps import EvalSettings

TINY_MODEL = [
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "dino.head.n_prototypes=32",
    "dino.head.hidden_dim=32",
    "dino.head.bottleneck_dim=16",
    "ibot.head.n_prototypes=32",
    "ibot.head.hidden_dim=32",
    "ibot.head.bottleneck_dim=16",
    "crops.local_crops_number=2",
    "train.batch_size_per_gpu=8",
    "optim.epochs=4",  # x epoch_length 1 (steps_scale 0.02) = 4 steps: 3 low-res, 1 full-res
    "optim.warmup_epochs=1",
    "teacher.warmup_temp_epochs=1",
    "train.log_period=1",
    "data.num_workers=0",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(out) -> EvalSettings:
    return EvalSettings(
        train=out / "data" / "train",
        val=out / "data" / "val",
        probe_epochs=2,
        corruptions="gaussian_noise,fog",
        severities="2",
        fourier_size=16,
        fourier_images_per_class=1,
        gradcam_per_class=1,
        workers=0,
        device="cpu",
    )


@pytest.mark.slow
def test_shrunken_demo_end_to_end(tmp_path, capsys, monkeypatch):
    from fastdino_cli.report.demo import RUNS, run_demo

    out = tmp_path / "demo"
    kwargs = dict(
        overrides=TINY_MODEL,
        data_size=32,
        train_per_class=4,
        val_per_class=2,
        settings=_settings(out),
        progress=False,
    )
    path = run_demo(out, steps_scale=0.02, **kwargs)
    md = path.read_text()
    printed = capsys.readouterr().out
    assert re.search(r"demo 12/12 report: done", printed)

    # every section present and filled: no "not measured" line, every figure on disk
    for heading in ("## Runs", "## Probes", "## Robustness", "## Training curves",
                    "## Fourier heatmaps", "## Grad-CAM", "## Pipeline wall-clock"):  # fmt: skip
        assert heading in md
    assert "not measured" not in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (path.parent / link).is_file(), link
    assert len(re.findall(r"!\[", md)) == 5  # 2 training curves, bars, Fourier, Grad-CAM

    runs = pd.read_csv(path.parent / "runs.csv").set_index("run")
    assert list(runs.index) == list(RUNS)
    assert (runs["steps"] == 4).all() and (runs["wall_clock_s"] > 0).all()
    assert runs.loc["fastdinov2", "pflops"] < runs.loc["dinov2", "pflops"]  # 3 of 4 steps low-res
    probe = pd.read_csv(path.parent / "probe.csv").set_index("run")
    assert probe[["knn20", "linear", "random_knn20", "random_linear"]].notna().all().all()
    rob = pd.read_csv(path.parent / "robustness.csv").set_index("run")
    assert rob[["clean", "noise", "weather", "mean_15", "mean_19"]].notna().all().all()
    # the report's numbers are the run directories' numbers
    stored = json.loads((out / "runs" / "dinov2" / "probe.json").read_text())["final.pt"][0]
    assert probe.loc["dinov2", "linear"] == pytest.approx(stored["linear"]["top1"])
    assert f"| dinov2 | {stored['knn']['20']['top1']:.1f} | {stored['linear']['top1']:.1f} |" in md

    timings = json.loads((out / "demo_timings.json").read_text())
    assert all(t["status"] == "ran" for t in timings["steps"].values())
    ckpt_mtime = (out / "runs" / "dinov2" / "final.pt").stat().st_mtime

    # `report --run-missing` fills a section whose outputs were deleted, and only that one
    import shutil

    from fastdino_cli.report.build import build_report

    shutil.rmtree(out / "runs" / "fastdinov2" / "gradcam")
    partial = build_report([out / "runs" / n for n in RUNS], tmp_path / "r1")
    assert partial.missing.get("Grad-CAM") == ["fastdinov2"]
    filled = build_report(
        [out / "runs" / n for n in RUNS], tmp_path / "r2", run_missing=True, settings=_settings(out)
    )
    assert not any(filled.missing.values()) and "gradcam" in filled.figures
    assert "running: fastdino gradcam" in capsys.readouterr().out

    # a second call reuses every finished step (nothing retrained or re-evaluated)
    run_demo(out, steps_scale=0.02, **kwargs)
    again = json.loads((out / "demo_timings.json").read_text())
    steps = {k: v for k, v in again["steps"].items() if k != "demo data"}
    assert all(t["status"] == "reused" for t in steps.values()), steps
    assert (out / "runs" / "dinov2" / "final.pt").stat().st_mtime == ckpt_mtime

    # the same folder spelled relative to the current directory is the same demo (issue 17)
    monkeypatch.chdir(tmp_path)
    run_demo("demo", steps_scale=0.02, **kwargs)
    spelled = json.loads((out / "demo_timings.json").read_text())["steps"]
    assert all(t["status"] == "reused" for k, t in spelled.items() if k != "demo data"), spelled
    assert (out / "runs" / "dinov2" / "final.pt").stat().st_mtime == ckpt_mtime

    # a finished run trained with another config is never silently reused
    from fastdino_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="the config differs from the run in .*dinov2"):
        run_demo(
            out, steps_scale=0.02, **{**kwargs, "overrides": [*TINY_MODEL, "optim.base_lr=0.1"]}
        )

    # more severities requested: only corrupt-eval runs again
    more = _settings(out)
    more.severities = "2,4"
    run_demo(out, steps_scale=0.02, **{**kwargs, "settings": more})
    third = json.loads((out / "demo_timings.json").read_text())["steps"]
    ran = sorted(k for k, v in third.items() if v["status"] == "ran" and k != "demo data")
    assert ran == ["corrupt-eval dinov2", "corrupt-eval fastdinov2"]

    # --seeds 2: the seed-0 runs are reused, only the seed-1 runs train and are evaluated, and
    # the report groups them into two recipes with intervals and a paired difference
    path = run_demo(out, steps_scale=0.02, seeds=2, **{**kwargs, "settings": more})
    fourth = json.loads((out / "demo_timings.json").read_text())["steps"]
    ran = sorted(k for k, v in fourth.items() if v["status"] == "ran" and k != "demo data")
    evals = ("probe", "corrupt-eval", "fourier-heatmap", "gradcam")
    expected = [f"{step} {name}-seed1" for step in evals for name in RUNS]
    assert ran == sorted([*expected, "pretrain demo seed 1", "pretrain demo-dinov2 seed 1"])
    assert (out / "runs" / "dinov2" / "final.pt").stat().st_mtime == ckpt_mtime
    seeded = pd.read_csv(path.parent / "recipes.csv")
    assert set(seeded["recipe"]) == set(RUNS) and (seeded["n"] == 2).all()
    diff = pd.read_csv(path.parent / "differences.csv")
    assert diff["paired"].all() and set(diff["recipe"]) == {"fastdinov2"}
    md = path.read_text()
    assert "## Recipes over seeds" in md and "## Differences to `dinov2`" in md
    runs = pd.read_csv(path.parent / "runs.csv")
    assert list(runs["run"]) == ["dinov2", "dinov2-seed1", "fastdinov2", "fastdinov2-seed1"]


def test_demo_cli_forwards_options(monkeypatch, tmp_path):
    import fastdino_cli.report.demo as demo_mod
    from fastdino_cli.cli import app

    seen = {}

    def fake(out, full=False, steps_scale=1.0, seeds=1):
        seen.update(out=out, full=full, steps_scale=steps_scale, seeds=seeds)
        return out / "report" / "report.md"

    monkeypatch.setattr(demo_mod, "run_demo", fake)
    args = ["demo", "--out", str(tmp_path), "--full", "--steps-scale", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == {"out": tmp_path, "full": True, "steps_scale": 0.5, "seeds": 1}
    assert "report.md" in result.output
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "3"])
    assert result.exit_code == 0, result.output
    assert seen["seeds"] == 3
    bad = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "0"])
    assert bad.exit_code == 2 and "--seeds" in bad.output


def test_seed_runs_plan():
    from fastdino_cli.report.demo import RUNS, plan_runs, report_order

    one = plan_runs()
    assert [(r.name, r.preset, r.seed, r.overrides) for r in one] == [
        ("dinov2", "demo-dinov2", 0, []),
        ("fastdinov2", "demo", 0, []),
    ]  # fmt: skip: seed 0 keeps today's folders and config (an existing demo is reused)
    assert [r.step_name for r in one] == ["pretrain demo-dinov2", "pretrain demo"]
    three = plan_runs(3)
    assert [r.name for r in three] == [
        "dinov2",
        "fastdinov2",
        "dinov2-seed1",
        "fastdinov2-seed1",
        "dinov2-seed2",
        "fastdinov2-seed2",
    ]  # fmt: skip: seed by seed, so an interrupted demo has whole comparisons first
    assert three[2].overrides == ["train.seed=1"] and three[5].run_dir("/o").as_posix() == (
        "/o/runs/fastdinov2-seed2"
    )
    assert len({r.step_name for r in three}) == 6  # timings keep one entry per run
    assert [r.name for r in report_order(three)][:3] == ["dinov2", "dinov2-seed1", "dinov2-seed2"]
    # a third recipe is one more entry
    more = plan_runs(2, {**RUNS, "distilled": "demo"})
    assert [r.name for r in more][3:] == ["dinov2-seed1", "fastdinov2-seed1", "distilled-seed1"]


def test_seed_runs_group_as_recipes_in_the_report(tmp_path):
    """The demo's seed folders are read back as two recipes of N seeds (configs only)."""
    from fastdino_cli.config import config_to_yaml, resolve_config
    from fastdino_cli.report.demo import plan_runs, report_order
    from fastdino_cli.report.read import read_run
    from fastdino_cli.report.recipes import group_recipes

    runs = report_order(plan_runs(2))
    for run in runs:
        run_dir = run.run_dir(tmp_path)
        run_dir.mkdir(parents=True)
        ovr = ["train.epoch_length=2", f"train.output_dir={run_dir}", *run.overrides]
        (run_dir / "config.yaml").write_text(config_to_yaml(resolve_config(run.preset, None, ovr)))
    recipes = group_recipes([read_run(r.run_dir(tmp_path), r.name) for r in runs])
    assert [(r.name, r.seeds) for r in recipes] == [("dinov2", [0, 1]), ("fastdinov2", [0, 1])]


def test_seeds_refuse_a_seed_override(tmp_path):
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.report.demo import plan_runs, run_demo

    with pytest.raises(ConfigError, match="--seeds sets train.seed"):
        run_demo(tmp_path, seeds=2, overrides=["train.seed=4"])
    with pytest.raises(ConfigError, match="--seeds 0 must be at least 1"):
        plan_runs(0)


def test_demo_settings_full_means_every_severity(tmp_path):
    from fastdino_cli.report.demo import demo_settings

    assert demo_settings(tmp_path).severities == "1,3,5"
    assert demo_settings(tmp_path, full=True).severities == "1-5"
    assert demo_settings(tmp_path).corruptions == "all"


def test_steps_scale_must_be_positive(tmp_path):
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.report.demo import run_demo

    with pytest.raises(ConfigError, match="steps_scale 0"):
        run_demo(tmp_path, steps_scale=0)
