"""`fastdino probe`: argument forwarding, end-to-end output, results files, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

import fastdino_cli.eval.probe.run as probe_lib
from fastdino_cli import checkpoint as ck
from fastdino_cli.cli import app, main
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


def run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_options_are_forwarded_to_run_probe(monkeypatch, tmp_path):
    seen = {}

    def fake(checkpoints, train, val, **kw):
        seen.update(checkpoints=checkpoints, train=train, val=val, **kw)
        return probe_lib.ProbeReport(rows=[])

    monkeypatch.setattr(probe_lib, "run_probe", fake)
    argv = ["probe", "a.pt", "b.pt", "--train", "tr", "--val", "va", "--k", "10,20"]
    argv += ["--epochs", "3", "--batch-size", "64", "--holdout", "0.2", "--n-last-blocks", "4"]
    argv += ["--baseline-random", "--invariance", "--no-cache", "--crop", "96", "--seed", "5"]
    argv += ["--augment", "--csv", "t.csv"]
    argv += ["--json"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert [str(p) for p in seen["checkpoints"]] == ["a.pt", "b.pt"]
    assert seen["ks"] == [10, 20] and seen["epochs"] == 3 and seen["batch_size"] == 64
    assert seen["holdout"] == 0.2 and seen["n_last_blocks"] == [4] and seen["crop"] == 96
    assert seen["baseline_random"] and seen["invariance"] and not seen["use_cache"]
    assert seen["seed"] == 5 and seen["write"] and seen["out"] is None and seen["augment"]
    assert str(seen["csv"]) == "t.csv"  # the library writes the table


def test_end_to_end_table_json_csv_and_results_file(tmp_path, demo_data, monkeypatch, capsys):
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    a = tiny_checkpoint(tmp_path / "runA" / "final.pt", seed=1)
    b = tiny_checkpoint(tmp_path / "runB" / "final.pt", seed=2)
    common = ["--train", str(demo_data.train), "--val", str(demo_data.val), "--k", "10,20"]
    common += ["--epochs", "2", "--batch-size", "32", "--workers", "0"]
    code, out, err = run(
        ["probe", str(a), str(b), *common, "--baseline-random", "--csv", str(tmp_path / "t.csv")],
        capsys,
    )
    assert code == 0, err
    assert "(random init)" in out and "best_on_val*" in out and "stored in" in out
    csv_lines = (tmp_path / "t.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 4 and csv_lines[0].startswith("model,knn10,knn20")
    for run_dir, path in ((tmp_path / "runA", a), (tmp_path / "runB", b)):
        saved = json.loads((run_dir / "probe.json").read_text())
        rows = saved["final.pt"]
        assert [r["random_init"] for r in rows] == [False, True]
        stored = ck.load(path)["probe"]
        assert stored["accuracy"]["linear_top1"] == pytest.approx(rows[0]["linear"]["top1"])
    code, out, err = run(["probe", str(a), *common, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert len(report["rows"]) == 1 and report["rows"][0]["features_cached"] is True
    assert set(report["rows"][0]["knn"]) == {"10", "20"}
    assert len(report["rows"][0]["linear"]["holdout_top1_per_head"]) == 4 * 13


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "ten"], "--k 'ten': expected comma-separated integers"),
        (["--holdout", "1.5"], "--holdout 1.5 must be strictly between 0 and 1"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, demo_data, capsys, extra, message):
    a = tiny_checkpoint(tmp_path / "a.pt")
    argv = ["probe", str(a), "--train", str(demo_data.train), "--val", str(demo_data.val)]
    code, _, err = run([*argv, "--no-cache", "--epochs", "1", *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_out_with_two_checkpoints_and_mismatched_classes(tmp_path, demo_data, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    base = ["--train", str(demo_data.train), "--val", str(demo_data.val)]
    code, _, err = run(["probe", str(a), str(a), *base, "--out", "x.pt"], capsys)
    assert code == 2 and "--out x.pt needs exactly one checkpoint" in err
    val = tmp_path / "val"
    shutil.copytree(demo_data.val, val)
    (val / "cat").rename(val / "dog")
    code, _, err = run(
        ["probe", str(a), "--train", str(demo_data.train), "--val", str(val)], capsys
    )
    assert code == 2 and "only in val: dog; only in train: cat" in err and err.count("\n") == 1
