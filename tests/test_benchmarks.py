"""The GPU benchmarks still run, and their derived figures follow from their measured ones.

They are run on a GPU only in the sessions that are lent one, so CI keeps them working: each
runs here for a step or two on the demo preset, and the JSON line is checked for the fields
``benchmarks/README.md`` documents and for the arithmetic that turns times into ratios and MFU.
Speed itself is never asserted.
"""

from __future__ import annotations

import pytest

from benchmarks import curriculum_speed, pretrain_step
from fastdino_cli.config import resolve_config
from fastdino_cli.train.flops import config_image_cost

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_curriculum_speed_reports_both_stages_and_consistent_ratios(capsys):
    batch = "train.batch_size_per_gpu=2"
    out = curriculum_speed.main(
        ["--preset", "demo", batch, "--steps", "1", "--warmup", "0", "--n-images", "4"]
    )
    assert capsys.readouterr().out.count("\n") == 1  # one JSON line
    first, last = out["stages"][0], out["stages"][-1]
    assert (first["global_crops_size"], last["global_crops_size"]) == (32, 64)
    cfg = resolve_config("demo", None, [batch])
    cost = config_image_cost(cfg, 32, 16).total, config_image_cost(cfg, 64, 32).total
    assert first["gflops_per_image"] == pytest.approx(cost[0], rel=1e-3)
    assert out["flops_ratio"] == pytest.approx(cost[1] / cost[0], rel=1e-3)
    wall = last["step_s_with_loader"] / first["step_s_with_loader"]
    assert out["wall_clock_ratio_end_to_end"] == pytest.approx(wall, rel=1e-3)
    assert out["wall_over_flops_ratio"] == pytest.approx(wall / out["flops_ratio"], rel=1e-3)
    assert out["target_within_15pct_of_flops_ratio"] == (wall >= 0.85 * out["flops_ratio"])
    assert out["precision"] == "fp32" and out["hardware"]["device"] == "cpu"


@pytest.mark.slow
def test_pretrain_step_reports_step_time_flops_and_mfu_against_a_given_peak(capsys):
    out = pretrain_step.main(
        [
            "--preset",
            "demo",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--peak-tflops",
            "2.0",
            "train.batch_size_per_gpu=4",
            "data.train=demo",
        ]
    )
    assert capsys.readouterr().out.count("\n") == 1
    (row,) = out["runs"]
    assert row["steps"] == 2 and row["batch_size"] == 4
    assert row["images_per_s"] == pytest.approx(4 / row["step_s"], rel=1e-2)
    cfg = resolve_config("demo", None, [])
    gflops = config_image_cost(cfg, row["global_crops_size"], row["local_crops_size"]).total
    assert row["gflops_per_image"] == pytest.approx(gflops, abs=0.01)
    assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2.0, abs=1e-3)
    assert 0.0 <= row["data_wait"] <= 1.0 and row["peak_rss_gib"] > 0
