"""build_report on synthetic run directories: numbers, relative changes, missing sections, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fastdino_cli.config import config_to_yaml, resolve_config
from fastdino_cli.report.build import build_report, fmt_rel
from fastdino_cli.report.read import read_run
from fastdino_cli.report.tables import relative_change, training_numbers, with_relative, world_size
from fastdino_cli.train.plan import plan_config

BATCH = 16


def _config(preset: str, *extra: str):
    return resolve_config(
        preset, None, ["train.epoch_length=2", f"train.batch_size_per_gpu={BATCH}", *extra]
    )  # 10 epochs x 2 = 20 steps


def _metrics(path: Path, windows: list[tuple[int, float]], t0: float = 1000.0) -> None:
    """One record per (last step of the window, images/s); timestamps consistent with them."""
    lines, prev, t = [], -1, t0
    for step, ips in windows:
        t += (step - prev) * BATCH / ips
        lines.append(json.dumps({"step": step, "stage": 0, "loss": 5.0 + step / 100,
                                 "images_per_s": ips, "time": t, "lr": 1e-3,
                                 "global_crops_size": 64}))  # fmt: skip
        prev = step
    path.write_text("\n".join(lines) + "\n")


def _probe(run: Path, knn20: float, linear: float, rand_knn20: float, rand_linear: float):
    def row(knn, lin, random_init):
        knn_d = {str(k): {"top1": knn + k / 100, "top5": 99.0} for k in (10, 20, 100)}
        knn_d["20"]["top1"] = knn
        return {"name": "x", "random_init": random_init, "knn": knn_d,
                "linear": {"top1": lin, "top5": 99.0}}  # fmt: skip

    data = {"final.pt": [row(knn20, linear, False), row(rand_knn20, rand_linear, True)]}
    (run / "probe.json").write_text(json.dumps(data))


def _corrupt(run: Path, clean: float, per_corruption: dict[str, list[float]]) -> None:
    from fastdino_cli.eval.corruption.registry import BENCHMARK, EXTRA, group_of

    folder = run / "corrupt-eval"
    folder.mkdir()
    cells = [
        {"model": "final", "corruption": c, "group": group_of(c), "severity": s,
         "top1": v, "top5": 1.0, "n": 10}
        for c, vals in per_corruption.items() for s, v in zip((1, 3), vals, strict=True)
    ]  # fmt: skip
    pd.DataFrame(cells).to_csv(folder / "cells.csv", index=False)
    per_c = {c: float(np.mean(v)) for c, v in per_corruption.items()}

    def mean(names):
        chosen = [per_c[c] for c in names if c in per_c]
        return float(np.mean(chosen)) if chosen else float("nan")

    summary = {"model": "final", "clean_top1": clean, "clean_top5": 1.0,
               "mean_benchmark": mean(BENCHMARK), "mean_extra": mean(EXTRA),
               "mean_all": mean(BENCHMARK + EXTRA), "mCE": float("nan"),
               "relative_mCE": float("nan")}  # fmt: skip
    pd.DataFrame([summary]).to_csv(folder / "summary.csv", index=False)
    meta = {"corruptions": list(per_corruption), "severities": [1, 3], "source": "val"}
    (folder / "results.json").write_text(json.dumps({"meta": meta, "summary": [summary]}))


def _fourier(run: Path, clean_error: float, fill: float) -> None:
    folder = run / "fourier" / "final"
    folder.mkdir(parents=True)
    error = np.full((5, 5), fill, dtype=np.float64)
    error[2, 2] = clean_error
    np.save(folder / "error.npy", error)
    np.save(folder / "error_minus_clean.npy", error - clean_error)
    meta = {"clean_error": clean_error, "mean_error": float(error.mean()),
            "axis": [-2, -1, 0, 1, 2], "eps": 1.0, "size": 16, "window": 5, "seed": 0,
            "n_images": 10}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


def _gradcam(run: Path, images: list[Path], classes: list[str], predicted: list[str]) -> None:
    folder = run / "gradcam"
    (folder / "maps" / "col").mkdir(parents=True)
    maps = []
    for i in range(len(images)):
        cam = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
        np.save(folder / "maps" / "col" / f"{i:03d}.npy", cam)
        maps.append(f"maps/col/{i:03d}.npy")
    meta = {"method": "gradcam", "target": "predicted", "target_layer": "blocks.-1.norm1",
            "image_size": [64, 64], "images": [str(p) for p in images], "true_class": classes,
            "columns": [{"name": "final", "checkpoint": None, "maps": maps,
                         "predicted": predicted, "confidence": [0.5] * len(images),
                         "explained": [f"class {p}" for p in predicted],
                         "score": [0.5] * len(images)}]}  # fmt: skip
    (folder / "gradcam.json").write_text(json.dumps(meta))


@pytest.fixture()
def runs(tmp_path, demo_data):
    """Run A (baseline, everything), run B (everything), run C (training only).

    Three recipes of one seed each: C is B's preset with another learning rate (a run with B's
    exact config would be a second seed of B's recipe, ``test_report_seeds.py``)."""
    a, b, c = tmp_path / "base", tmp_path / "fast", tmp_path / "bare"
    for run, preset, extra in (
        (a, "demo-dinov2", ()),
        (b, "demo", ()),
        (c, "demo", ("optim.base_lr=0.003",)),
    ):
        run.mkdir()
        (run / "config.yaml").write_text(config_to_yaml(_config(preset, *extra)))
    # A: 20 steps in two windows of 10 at 64 and 32 img/s -> 10*16/64 + 10*16/32 = 7.5 s
    _metrics(a / "metrics.jsonl", [(9, 64.0), (19, 32.0)])
    # B: 20 steps at 80 img/s -> 4 s; C: the first 10 steps only at 40 img/s -> 4 s
    _metrics(b / "metrics.jsonl", [(9, 80.0), (19, 80.0)])
    _metrics(c / "metrics.jsonl", [(9, 40.0)])
    _probe(a, knn20=40.0, linear=50.0, rand_knn20=20.0, rand_linear=25.0)
    _probe(b, knn20=44.0, linear=45.0, rand_knn20=21.0, rand_linear=24.0)
    _corrupt(a, 0.80, {"gaussian_noise": [0.6, 0.4], "fog": [0.7, 0.5], "spatter": [0.9, 0.7]})
    _corrupt(b, 0.90, {"gaussian_noise": [0.7, 0.5], "fog": [0.8, 0.6], "spatter": [0.9, 0.9]})
    _fourier(a, 0.3, 0.5)
    _fourier(b, 0.2, 0.6)
    val = sorted((demo_data.root / "val").rglob("*.png"))[:2]
    classes = [p.parent.name for p in val]
    _gradcam(a, val, classes, classes)
    _gradcam(b, val, classes, [classes[0], "other"])
    return a, b, c


def test_training_numbers_from_windows(runs):
    a, b, c = (read_run(r) for r in runs)
    ta = training_numbers(a)
    assert ta["steps"] == 20 and ta["total_steps"] == 20
    assert ta["wall_clock_s"] == pytest.approx(7.5)
    assert ta["images_per_s"] == pytest.approx(20 * BATCH / 7.5)
    assert training_numbers(c)["steps"] == 10
    assert world_size(a.metrics, BATCH) == 1
    assert world_size(a.metrics, BATCH // 4) == 4  # the same log read as 4 processes of 4


def test_relative_change_against_first_row():
    s = pd.Series([4.0, 2.0, 5.0, float("nan")])
    assert relative_change(s).tolist()[:3] == pytest.approx([0.0, -0.5, 0.25])
    assert math.isnan(relative_change(s).iloc[3])
    assert relative_change(pd.Series([0.0, 1.0])).isna().all()
    frame = with_relative(pd.DataFrame({"x": [2.0, 3.0], "y": ["a", "b"]}), ["x"])
    assert list(frame.columns) == ["x", "x_rel", "y"]
    assert fmt_rel(-0.5) == "-50.0%" and fmt_rel(0.25) == "+25.0%" and fmt_rel(None) == "-"


def test_report_numbers_equal_inputs(runs, tmp_path):
    a, b, c = runs
    report = build_report([a, b, c], tmp_path / "out")
    md = report.path.read_text()
    assert [r.name for r in report.recipes] == ["base", "fast", "bare"]
    assert "One run per recipe: no intervals." in md and not report.has_seeds
    runs_t = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run")
    assert runs_t.loc["base", "wall_clock_s"] == pytest.approx(7.5)
    assert runs_t.loc["fast", "wall_clock_s_rel"] == pytest.approx(4.0 / 7.5 - 1)
    # FLOPs from the plan, for the steps done (C did half the steps of B, same preset)
    plan_b = plan_config(_config("demo"))
    assert runs_t.loc["fast", "pflops"] == pytest.approx(plan_b.pflops)
    assert runs_t.loc["bare", "pflops"] < runs_t.loc["fast", "pflops"]
    assert runs_t.loc["fast", "pflops_rel"] == pytest.approx(
        plan_b.pflops / plan_config(_config("demo-dinov2")).pflops - 1
    )
    row_b = next(line for line in md.splitlines() if line.startswith("| fast | demo |"))
    assert f"{20 * BATCH / 4.0:.1f}" in row_b  # images/s
    assert f"{100 * (4.0 / 7.5 - 1):+.1f}%" in row_b  # time vs base: -46.7%

    probe = pd.read_csv(tmp_path / "out" / "probe.csv").set_index("run")
    assert probe.loc["fast", "knn20"] == 44.0 and probe.loc["fast", "random_linear"] == 24.0
    assert probe.loc["fast", "linear_rel"] == pytest.approx(45.0 / 50.0 - 1)
    assert "| fast | 44.0 | 45.0 | +10.0% | -10.0% | 21.0 | 24.0 |" in md
    assert "| base | 40.0 | 50.0 | +0.0% | +0.0% | 20.0 | 25.0 |" in md

    rob = pd.read_csv(tmp_path / "out" / "robustness.csv").set_index("run")
    assert rob.loc["base", "clean"] == pytest.approx(80.0)
    assert rob.loc["base", "noise"] == pytest.approx(50.0)  # mean of 0.6 and 0.4
    assert rob.loc["base", "weather"] == pytest.approx(60.0)
    assert rob.loc["base", "mean_15"] == pytest.approx(55.0)  # noise 50, fog 60
    assert rob.loc["base", "mean_19"] == pytest.approx((50 + 60 + 80) / 3)
    assert math.isnan(rob.loc["base", "blur"])
    assert rob.loc["fast", "mean_19_rel"] == pytest.approx((60 + 70 + 90) / (50 + 60 + 80) - 1)
    assert "| fast | 90.0 | 60.0 | - | 70.0 | - | 90.0 | 65.0 | 73.3 | +15.8% |" in md
    wide = pd.read_csv(tmp_path / "out" / "corruptions.csv").set_index("corruption")
    assert wide.loc["spatter", "fast"] == pytest.approx(90.0)

    for name in ("corruption_bars", "fourier", "gradcam", "training:base", "training:fast"):
        assert report.figures[name].is_file(), name
        assert str(report.figures[name].relative_to(tmp_path / "out")) in md
    assert "| base | 30.0 |" in md  # Fourier clean error %
    assert "`base` 100%, `fast` 50%" in md  # Grad-CAM images classified correctly


def test_missing_sections_say_what_to_run(runs, tmp_path):
    a, b, c = runs
    report = build_report([a, c], tmp_path / "out")
    md = report.path.read_text()
    ckpt = c / "final.pt"
    for cmd in (
        f"fastdino probe {ckpt} --train",
        f"fastdino corrupt-eval {ckpt} --val",
        f"fastdino fourier-heatmap {ckpt} --data",
        f"fastdino gradcam {ckpt} --data",
    ):
        line = next(ln for ln in md.splitlines() if cmd in ln)
        assert line.startswith("- `bare`: not measured; run `") and line.endswith("to fill this.")
    assert report.missing["Probes"] == ["bare"] and report.missing["Grad-CAM"] == ["bare"]
    assert "Runs" not in report.missing  # C was trained
    # a lone run with nothing but a config: every evaluation missing, no crash, no figures
    only = build_report([c], tmp_path / "out2")
    assert set(only.missing) >= {"Probes", "Robustness", "Fourier", "Grad-CAM"}
    assert set(only.figures) == {"training:bare"}


def test_unreadable_file_is_reported_not_fatal(runs, tmp_path):
    a, _, _ = runs
    (a / "probe.json").write_text("{not json")
    md = build_report([a], tmp_path / "out").path.read_text()
    assert "## Files that could not be read" in md and "probe.json" in md


def test_report_cli(runs, tmp_path):
    from fastdino_cli.cli import app

    a, b, _ = runs
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "report.md").is_file() and "wrote" in result.output
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "is not a directory" in str(bad.exception) or "nope" in bad.output


def test_run_missing_needs_a_checkpoint(runs, tmp_path):
    from fastdino_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="has no final.pt; train it first"):
        build_report([runs[2]], tmp_path / "out", run_missing=True)
