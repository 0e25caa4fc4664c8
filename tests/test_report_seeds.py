"""Seeds and confidence: the bootstrap against independent computations, grouping by recipe, and
the report's intervals on synthetic run directories with several seeds per recipe."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from fastdino_cli.config import config_to_yaml, resolve_config
from fastdino_cli.report.intervals import N_BOOT, difference, summarize
from tests.test_report import BATCH, _corrupt, _fourier, _metrics, _probe


def exact_bootstrap_interval(values, level=0.95) -> tuple[float, float]:
    """The ideal (infinite-resample) percentile interval: every one of the n^n equally likely
    resamples enumerated, its mean taken, and the quantiles of that discrete distribution (the
    inverse of its CDF) at the two tails."""
    x = np.asarray(values, dtype=float)
    means = [x[list(idx)].mean() for idx in itertools.product(range(len(x)), repeat=len(x))]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], method="inverted_cdf")
    return float(low), float(high)


# --------------------------------------------------------------------------------------------
# The bootstrap
# --------------------------------------------------------------------------------------------


def test_interval_is_the_documented_percentile_bootstrap():
    values = [3.1, 4.7, 5.0, 8.2, 2.2]
    iv = summarize(values)
    # by hand: N_BOOT resamples of 5 indices from default_rng(0), mean each, 2.5/97.5 percentiles
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 5, size=(N_BOOT, 5))
    means = np.asarray(values)[idx].mean(axis=1)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert iv.mean == pytest.approx(np.mean(values)) and iv.n == 5
    assert iv.std == pytest.approx(np.std(values, ddof=1))
    # independently: the exact bootstrap distribution (all 3125 resamples) agrees to MC error
    low, high = exact_bootstrap_interval(values)
    assert iv.low == pytest.approx(low, abs=0.06) and iv.high == pytest.approx(high, abs=0.06)
    assert iv.low < np.mean(values) < iv.high
    # deterministic: the same numbers every call, whatever else was drawn before
    np.random.default_rng(1).random(100)
    assert summarize(values) == iv


def test_limiting_cases():
    same = summarize([42.0, 42.0, 42.0, 42.0])
    assert (same.mean, same.std, same.low, same.high) == (42.0, 0.0, 42.0, 42.0)
    # two values: a resample's mean is a (1/4), the midpoint (1/2) or b (1/4): the 95% interval
    # is exactly [min, max]
    two = summarize([10.0, 14.0])
    assert (two.low, two.high) == (10.0, 14.0) and two.std == pytest.approx(math.sqrt(8))
    one = summarize([7.0])
    assert one.mean == 7.0 and one.n == 1 and math.isnan(one.low) and math.isnan(one.std)
    # a missing measurement is left out, not counted as zero
    gap = summarize([1.0, float("nan"), None, 3.0])
    assert gap.n == 2 and gap.mean == 2.0 and (gap.low, gap.high) == (1.0, 3.0)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_difference_removes_the_seed_effect():
    # each seed shifts both recipes alike; the recipe adds exactly 3: paired, no spread at all
    base = [(0, 40.0), (1, 55.0), (2, 47.0)]
    other = [(s, v + 3.0) for s, v in base]
    d = difference(base, other)
    assert d.paired and d.n == 3 and (d.mean, d.low, d.high) == (3.0, 3.0, 3.0)
    assert d.excludes_zero
    # paired differences 5, 4, 6 (seeds listed in any order): the bootstrap of their mean
    d = difference([(0, 40.0), (1, 42.0), (2, 44.0)], [(2, 50.0), (0, 45.0), (1, 46.0)])
    assert d.paired and d.mean == pytest.approx(5.0)
    low, high = exact_bootstrap_interval([5.0, 4.0, 6.0])
    assert (d.low, d.high) == pytest.approx((low, high), abs=0.05)
    # unpaired, the same numbers cannot tell the recipes apart as sharply
    u = difference([(0, 40.0), (1, 55.0), (2, 47.0)], [(3, 43.0), (4, 58.0), (5, 50.0)])
    assert not u.paired and u.mean == pytest.approx(3.0) and u.high - u.low > 8


def test_unpaired_difference_by_hand():
    base = [(0, 1.0), (1, 2.0), (2, 4.0)]
    other = [(7, 3.0), (8, 6.0)]  # no seed in common: unpaired
    d = difference(base, other)
    rng = np.random.default_rng(0)  # the documented order: the other recipe's draws first
    o = np.array([3.0, 6.0])[rng.integers(0, 2, size=(N_BOOT, 2))].mean(axis=1)
    b = np.array([1.0, 2.0, 4.0])[rng.integers(0, 3, size=(N_BOOT, 3))].mean(axis=1)
    assert (d.low, d.high) == pytest.approx(tuple(np.percentile(o - b, [2.5, 97.5])), abs=1e-12)
    assert d.mean == pytest.approx(4.5 - 7 / 3) and (d.n, d.n_baseline) == (2, 3)
    # one seed in common is not enough to pair; a recipe with one run has no interval
    one_shared = difference([(0, 1.0), (1, 2.0)], [(1, 5.0), (2, 6.0)])
    assert not one_shared.paired and one_shared.mean == pytest.approx(4.0)
    lone = difference(base, [(0, 9.0)])
    assert lone.mean == pytest.approx(9 - 7 / 3) and math.isnan(lone.low)
    assert not lone.excludes_zero


# --------------------------------------------------------------------------------------------
# Grouping by recipe
# --------------------------------------------------------------------------------------------


def _run(root, name, preset, seed, extra=(), knn=None, corrupt=None, fourier=None, ips=64.0):
    run = root / name
    run.mkdir()
    cfg = resolve_config(
        preset,
        None,
        ["train.epoch_length=2", f"train.batch_size_per_gpu={BATCH}", f"train.seed={seed}",
         f"train.output_dir={run}", *extra],
    )  # fmt: skip
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    _metrics(run / "metrics.jsonl", [(9, ips), (19, ips)])
    if knn is not None:
        _probe(run, knn20=knn, linear=knn + 10, rand_knn20=10.0, rand_linear=12.0)
    if corrupt is not None:
        _corrupt(run, corrupt[0], corrupt[1])
    if fourier is not None:
        _fourier(run, fourier, 0.5)
    return run


def test_grouping_excludes_the_seed_only(tmp_path):
    from fastdino_cli.report.read import read_run
    from fastdino_cli.report.recipes import group_recipes, separating_keys

    dirs = [
        _run(tmp_path, "dinov2", "demo-dinov2", 0),
        _run(tmp_path, "fast", "demo", 0),
        _run(tmp_path, "dinov2-seed1", "demo-dinov2", 1, ["train.log_period=3"]),
        _run(tmp_path, "fast_seed2", "demo", 2),
        _run(tmp_path, "fast-lr", "demo", 1, ["optim.base_lr=0.01"]),  # another recipe
    ]
    bare = tmp_path / "bare"
    bare.mkdir()  # no config: a recipe of its own
    recipes = group_recipes([read_run(d) for d in [*dirs, bare]])
    assert [r.name for r in recipes] == ["dinov2", "fast", "fast-lr", "bare"]
    assert [[run.label for run in r.runs] for r in recipes] == [
        ["dinov2", "dinov2-seed1"], ["fast", "fast_seed2"], ["fast-lr"], ["bare"]
    ]  # fmt: skip
    assert recipes[0].seeds == [0, 1] and recipes[1].seeds == [0, 2] and recipes[3].seeds == [None]
    assert recipes[0].preset == "demo-dinov2" and "train.seed" not in recipes[0].settings
    keys = separating_keys(recipes[1:3])
    assert keys == ["optim.base_lr"]
    assert "preset" in separating_keys(recipes[:2])  # the preset name counts


# --------------------------------------------------------------------------------------------
# The report with seeds
# --------------------------------------------------------------------------------------------

KNN = {"dinov2": [40.0, 42.0, 44.0], "fast": [45.0, 46.0, 50.0]}
CLEAN = {"dinov2": [0.80, 0.82, 0.78], "fast": [0.85, 0.86, 0.90]}


@pytest.fixture()
def seeded(tmp_path):
    """Three seeds of each recipe; the baseline's last seed has no Fourier map."""
    dirs = []
    (tmp_path / "runs").mkdir()
    for name, preset in (("dinov2", "demo-dinov2"), ("fast", "demo")):
        for seed in range(3):
            label = name if seed == 0 else f"{name}-seed{seed}"
            noise = [CLEAN[name][seed] - 0.2, CLEAN[name][seed] - 0.3]
            fourier = None if (name, seed) == ("dinov2", 2) else 0.3 - 0.01 * seed
            dirs.append(
                _run(
                    tmp_path / "runs",
                    label,
                    preset,
                    seed,
                    knn=KNN[name][seed],
                    corrupt=(CLEAN[name][seed], {"gaussian_noise": noise}),
                    fourier=fourier,
                    ips=64.0 + 8 * seed,
                )  # fmt: skip
            )
    return dirs


def test_report_shows_intervals_per_recipe(seeded, tmp_path):
    from fastdino_cli.report.build import build_report

    report = build_report(seeded, tmp_path / "out")
    md = report.path.read_text()
    assert [r.name for r in report.recipes] == ["dinov2", "fast"] and report.has_seeds
    rec = pd.read_csv(tmp_path / "out" / "recipes.csv").set_index(["recipe", "metric"])
    knn = rec.loc[("fast", "knn20")]
    assert knn["n"] == 3 and knn["mean"] == pytest.approx(47.0)
    assert knn["std"] == pytest.approx(np.std(KNN["fast"], ddof=1))
    low, high = exact_bootstrap_interval(KNN["fast"])
    assert (knn["ci_low"], knn["ci_high"]) == pytest.approx((low, high), abs=0.05)
    assert knn["seeds"] == "0,1,2"
    # every metric family is summarised: probes, robustness, Fourier, wall-clock, FLOPs
    metrics = set(rec.loc["fast"].index)
    assert {"knn10", "knn20", "knn100", "linear", "clean", "mean_19", "fourier_clean_error",
            "wall_clock_min", "images_per_s", "pflops"} <= metrics  # fmt: skip
    assert "random_linear" not in metrics  # the random-init floor is not a recipe's metric
    clean = rec.loc[("dinov2", "clean")]
    assert clean["mean"] == pytest.approx(80.0) and clean["std"] == pytest.approx(2.0)
    four = rec.loc[("dinov2", "fourier_clean_error")]  # seed 2 has no map: 2 values
    assert four["n"] == 2 and (four["ci_low"], four["ci_high"]) == pytest.approx((29.0, 30.0))
    # wall-clock of seed s: 20 steps x 16 images at 64 + 8 s images/s
    wall = rec.loc[("fast", "wall_clock_min")]
    assert wall["mean"] == pytest.approx(np.mean([320 / (64 + 8 * s) / 60 for s in range(3)]))
    pflops = rec.loc[("fast", "pflops")]
    assert pflops["std"] == pytest.approx(0.0) and pflops["ci_low"] == pflops["ci_high"]

    diff = pd.read_csv(tmp_path / "out" / "differences.csv").set_index(["recipe", "metric"])
    d = diff.loc[("fast", "knn20")]
    assert d["paired"] and d["n"] == 3 and d["diff"] == pytest.approx(5.0)
    low, high = exact_bootstrap_interval([5.0, 4.0, 6.0])
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((low, high), abs=0.05)
    assert d["excludes_zero"] and d["rel_diff"] == pytest.approx(5.0 / 42.0)
    f = diff.loc[("fast", "fourier_clean_error")]  # seeds 0 and 1 pair; seed 2 has no baseline
    assert f["paired"] and f["n"] == 2 and f["diff"] == pytest.approx(0.0)

    # markdown: the recipes table with mean ± std [interval], the differences with their mark
    assert "## Recipes over seeds (mean ± std, 95% bootstrap interval)" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| kNN k=20 top-1 % |"))
    assert f"| 42.0 ± 2.0 [{np.percentile([40, 42, 44], 0):.1f}" in row
    assert "| 47.0 ± 2.6 [" in row
    diff_row = [ln for ln in md.splitlines() if ln.startswith("| kNN k=20 top-1 % |")][1]
    assert "| +5.0 [+4." in diff_row and "] * (+11.9%) |" in diff_row
    assert "- `fast` − `dinov2`: paired by seed (3 seeds run by both)." in md
    assert "One run per recipe" not in md and "-0.0" not in md
    for key in ("recipes", "differences", "corruption_intervals"):
        assert report.figures[key].is_file(), key
        assert str(report.figures[key].relative_to(tmp_path / "out")) in md
    assert "corruption_bars" not in report.figures  # one bar per recipe replaces one per run
    ci = pd.read_csv(tmp_path / "out" / "corruption_intervals.csv").set_index("recipe")
    noise = [0.5 * (c - 0.2 + c - 0.3) * 100 for c in CLEAN["fast"]]
    assert ci.loc["fast", "mean"] == pytest.approx(np.mean(noise))
    # deterministic: the same report twice gives the same numbers
    build_report(seeded, tmp_path / "again")
    again = (tmp_path / "again" / "recipes.csv").read_text()
    assert again == (tmp_path / "out" / "recipes.csv").read_text()


def test_one_seed_per_recipe_keeps_the_report_and_says_why(seeded, tmp_path):
    from fastdino_cli.report.build import build_report

    report = build_report([seeded[0], seeded[3]], tmp_path / "out")
    md = report.path.read_text()
    assert not report.has_seeds
    assert "One run per recipe: no intervals. One seed of a small run cannot separate" in md
    assert "## Recipes over seeds" not in md and "bootstrap" not in md
    assert not (tmp_path / "out" / "recipes.csv").exists()
    assert "corruption_bars" in report.figures and "recipes" not in report.figures


def test_unpaired_when_seeds_do_not_match(seeded, tmp_path):
    from fastdino_cli.report.build import build_report

    # baseline seeds 0, 1; the other recipe only seed 2 (stopped half-way): no pairs
    _metrics(seeded[5] / "metrics.jsonl", [(9, 64.0)])
    report = build_report([seeded[0], seeded[1], seeded[5]], tmp_path / "out")
    md = report.path.read_text()
    d = report.tables["differences"].set_index("metric").loc["knn20"]
    assert not d["paired"] and d["diff"] == pytest.approx(50.0 - 41.0) and math.isnan(d["ci_low"])
    assert "unpaired (1 vs 2 runs; fewer than two seeds in common)" in md
    assert "- `fast`: preset `demo`, 1 run(s): `fast-seed2` (seed 2, unfinished: 10/20 steps)" in md
    rec = report.tables["recipes"].set_index(["recipe", "metric"])
    assert rec.loc[("fast", "knn20"), "n"] == 1 and math.isnan(rec.loc[("fast", "knn20"), "std"])


def test_report_cli_names_the_recipes(seeded, tmp_path):
    from typer.testing import CliRunner

    from fastdino_cli.cli import app

    args = ["report", *map(str, seeded), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "recipes, with 95% intervals over seeds: dinov2 (3 runs), fast (3 runs)" in result.output
