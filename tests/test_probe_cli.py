"""`fastdino probe`: argument forwarding, end-to-end output, results files, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import fastdino_cli.eval.probe.run as probe_lib
from fastdino_cli import checkpoint as ck
from fastdino_cli.cli import app
from tests.cli_run import run
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


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


def test_protocol_options_are_forwarded(monkeypatch):
    seen = {}

    def fake(checkpoints, train, val, **kw):
        seen.update(kw)
        return probe_lib.ProbeReport(rows=[])

    monkeypatch.setattr(probe_lib, "run_probe", fake)
    argv = ["probe", "a.pt", "--train", "tr", "--val", "va", "--shots", "1,2,5,10", "--tries", "3"]
    argv += ["--test", "imagenet-r", "--test", "imagenet-a", "--refit", "--top-confusions", "4"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert seen["shots"] == [1, 2, 5, 10] and seen["tries"] == 3 and seen["refit"]
    assert [str(t) for t in seen["tests"]] == ["imagenet-r", "imagenet-a"]
    assert seen["top_confusions_n"] == 4
    CliRunner().invoke(app, argv[:6])
    assert seen["shots"] == () and seen["tests"] == () and not seen["refit"]


def test_few_shot_per_class_subset_and_refit_end_to_end(tmp_path, demo_data, monkeypatch, capsys):
    """probe.json keeps every earlier key and adds the new ones; the numbers agree with each
    other where they must (per-class vs overall, the --test copy of val classes vs val)."""
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    a = tiny_checkpoint(tmp_path / "run" / "final.pt", seed=1)
    subset_classes = ["camera", "cat", "rocket"]
    for name in subset_classes:
        shutil.copytree(demo_data.val / name, tmp_path / "sub" / name)
    argv = ["probe", str(a), "--train", str(demo_data.train), "--val", str(demo_data.val)]
    argv += ["--k", "5,20", "--epochs", "2", "--batch-size", "32", "--workers", "0"]
    argv += ["--shots", "1,2", "--tries", "2", "--test", str(tmp_path / "sub"), "--refit"]
    argv += ["--csv", str(tmp_path / "t.csv")]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "few-shot top-1" in out and "--test folders" in out and "top confusions" in out
    assert "linear_refit" in out and "probe head (refit" in out
    row = json.loads((tmp_path / "run" / "probe.json").read_text())["final.pt"][0]
    for key in ("name", "checkpoint", "random_init", "recipe", "num_train", "num_val", "knn",
                "linear", "invariance", "features_cached", "seconds", "stored_in"):  # fmt: skip
        assert key in row
    assert set(row["linear"]) >= {"top1", "top5", "holdout_top1", "head", "num_fit"}
    # per class: ten classes of four val images; their mean is the overall top-1
    per_class = row["per_class"]
    assert [r["class"] for r in per_class][:2] == ["astronaut", "brick"] and len(per_class) == 10
    assert all(r["num_val"] == 4 for r in per_class)
    for col, overall in (("linear", row["linear"]["top1"]), ("knn5", row["knn"]["5"]["top1"])):
        assert np.mean([r[col] for r in per_class]) == pytest.approx(overall)
    wrong = 100 - row["linear"]["top1"]
    conf = row["top_confusions"]
    assert 0 < len(conf) <= 10 and sum(c["cost"] for c in conf) <= wrong + 1e-9
    assert [c["count"] for c in conf] == sorted((c["count"] for c in conf), reverse=True)
    # few-shot: two shot counts, two tries each, s images per class
    assert [(f["shots"], f["num_tries"], f["num_train"]) for f in row["few_shot"]] == [
        (1, 2, 10),
        (2, 2, 20),
    ]
    one = row["few_shot"][0]
    tries = [t["knn"]["5"]["top1"] for t in one["tries"]]
    assert one["knn"]["5"]["top1_mean"] == pytest.approx(np.mean(tries))
    assert one["knn"]["5"]["top1_std"] == pytest.approx(np.std(tries, ddof=1))
    assert "20" not in one["knn"]  # k = 20 does not exist with 10 training images
    # --test holds copies of three val classes: unrestricted, it is those classes of val
    (sub,) = row["subsets"]
    assert (sub["num_images"], sub["num_classes"]) == (12, 3)
    from_val = np.mean([r["linear"] for r in per_class if r["class"] in subset_classes])
    assert sub["linear"]["top1_all_classes"] == pytest.approx(from_val)
    assert sub["linear"]["top1"] >= sub["linear"]["top1_all_classes"]  # restriction only helps
    # refit: trained on all 80 train images, and it is the head stored
    assert row["refit"]["num_fit"] == 80
    stored = ck.load(a)["probe"]
    assert stored["accuracy"]["linear_top1"] == pytest.approx(row["refit"]["top1"])
    assert stored["accuracy"]["refit"] is True and stored["protocol"]["num_fit"] == 80
    assert stored["accuracy"]["holdout_top1"] == pytest.approx(row["linear"]["holdout_top1"])
    # files: per-class CSV/figure/confusions beside probe.json, detail tables beside --csv
    details = tmp_path / "run" / "probe"
    assert (details / "final_per_class.png").read_bytes()[:4] == b"\x89PNG"
    assert (details / "final_per_class.csv").read_text().startswith("model,class,num_val,linear")
    assert (details / "final_confusions.csv").is_file()
    few_csv = (tmp_path / "t_few_shot.csv").read_text().splitlines()
    header = "model,shots,tries,num_train,knn5_mean,knn5_std,knn20_mean,knn20_std,linear_"
    assert few_csv[0] == header + "mean,linear_std"
    assert len(few_csv) == 3 and few_csv[1].split(",")[6:8] == ["", ""]  # no k=20 at 1 shot
    for table in ("subsets", "per_class", "confusions"):
        assert (tmp_path / f"t_{table}.csv").is_file()


def test_test_folder_with_an_unknown_class_is_a_one_line_error(tmp_path, demo_data, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    shutil.copytree(demo_data.val / "cat", tmp_path / "sub" / "cat")
    shutil.copytree(demo_data.val / "cat", tmp_path / "sub" / "zebra")
    argv = ["probe", str(a), "--train", str(demo_data.train), "--val", str(demo_data.val)]
    code, _, err = run([*argv, "--test", str(tmp_path / "sub"), "--no-cache"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "class 'zebra' is not among the 10 classes of --train" in err
    code, _, err = run([*argv, "--refit", "--augment"], capsys)
    assert code == 2 and "--refit retrains the chosen head on cached features" in err
