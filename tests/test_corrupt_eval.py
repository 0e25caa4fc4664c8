"""corrupt-eval: layouts, on-the-fly corruption, --write-c round trip, metrics, CLI, figures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.data import find_imagenet_c, tensor_to_uint8
from fastdino_cli.eval.corruption.metrics import (
    ALEXNET_CLEAN_ERR,
    ALEXNET_ERR,
    mce,
    mce_unavailable_reason,
    relative_mce,
)
from fastdino_cli.eval.corruption.registry import BENCHMARK, corrupt, corruption_rng
from fastdino_cli.eval.corruption.result import format_table, write_results
from fastdino_cli.eval.corruption.run import evaluate_classifiers

CLASSES = ["dark", "mid", "light"]
LEVELS = {"dark": 40, "mid": 128, "light": 215}


class GreyOracle(nn.Module):
    """Classifies by mean grey level: the nearest of the class levels. Knows its own transform."""

    def __init__(self, class_names=CLASSES, image_size: int = 16, resize_size: int = 18):
        super().__init__()
        self.class_names = list(class_names)
        self.image_size, self.resize_size = image_size, resize_size
        self.levels = torch.tensor([LEVELS.get(c, 0) / 255 for c in self.class_names])

    def preprocess(self, pil):
        img = pil.convert("RGB").resize((self.resize_size, self.resize_size), Image.BILINEAR)
        off = (self.resize_size - self.image_size) // 2
        img = img.crop((off, off, off + self.image_size, off + self.image_size))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255

    def forward_pixels(self, x01):
        return -(x01.mean(dim=(1, 2, 3))[:, None] - self.levels[None]).abs()


def _write_class_images(folder: Path, per_class: int = 3, size: int = 20, wrong: int = 0):
    """``folder/<class>/img_k.png``: flat grey at the class level plus mild texture.

    The last ``wrong`` images of each class get the next class's level (known errors).
    """
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            level = LEVELS[CLASSES[(c + 1) % 3]] if k >= per_class - wrong else LEVELS[name]
            img = np.clip(level + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / name / f"img_{k}.png")


def test_mce_is_100_for_alexnet_errors():
    assert mce(dict(ALEXNET_ERR)) == pytest.approx(100.0)
    # relative mCE: AlexNet's own degradation gives 100 too
    assert relative_mce(dict(ALEXNET_ERR), ALEXNET_CLEAN_ERR) == pytest.approx(100.0)
    # half of AlexNet's error everywhere -> 50
    assert mce({c: e / 2 for c, e in ALEXNET_ERR.items()}) == pytest.approx(50.0)


def test_relative_mce_formula_by_hand():
    errors = {c: 0.5 for c in BENCHMARK}
    clean = 0.2
    expected = np.mean([(0.5 - 0.2) / (ALEXNET_ERR[c] - 0.43478) for c in BENCHMARK]) * 100
    assert relative_mce(errors, clean) == pytest.approx(expected)
    # ResNet-50-like sanity: a model better than AlexNet everywhere has relative mCE < 100
    assert relative_mce({c: e - 0.2 for c, e in ALEXNET_ERR.items()}, 0.2385) < 100


def test_mce_only_for_the_1000_imagenet_classes():
    cells = {(c, s) for c in BENCHMARK for s in range(1, 6)}
    why, _ = mce_unavailable_reason(CLASSES, cells, True)
    assert "3 classes, not the 1000 ImageNet-1k classes" in why
    wnids = [f"n{i:08d}" for i in range(1000)]
    assert mce_unavailable_reason(wnids, cells, True) == (None, None)
    why, _ = mce_unavailable_reason(wnids, cells - {("fog", 3)}, True)
    assert "missing fog" in why
    assert mce_unavailable_reason(wnids, cells, False)[1].startswith("relative mCE needs")


def test_released_layout_reader_and_counts(tmp_path):
    root = tmp_path / "imagenet-c"
    _write_class_images(root / "fog" / "1", per_class=4, wrong=1)  # released layout
    _write_class_images(root / "fog" / "2" / "val", per_class=4, wrong=2)  # FastDINOv2 variant
    (root / "fog" / "2" / "labels.txt").write_text("dark,Dark grey\nmid,Mid grey\nlight,Light\n")
    sets, labels = find_imagenet_c(root, ["fog"], [1, 2])
    assert [len(v) for v in sets.values()] == [12, 12]
    assert labels["mid"] == "Mid grey"
    _write_class_images(tmp_path / "clean", per_class=2)
    res = evaluate_classifiers(
        {"oracle": GreyOracle()},
        imagenet_c=root,
        clean=tmp_path / "clean",
        corruptions="fog",
        severities="1,2",
        batch_size=5,
    )
    cells = res.cells.set_index("severity")
    assert cells.loc[1, "top1"] == pytest.approx(3 / 4) and cells.loc[2, "top1"] == 0.5
    assert cells.loc[1, "n"] == 12 and cells.loc[1, "top5"] == 1.0  # 3 classes: top-5 is all
    summary = res.summary.iloc[0]
    assert summary["clean_top1"] == 1.0 and summary["mean_all"] == pytest.approx(0.625)
    assert np.isnan(summary["mean_extra"]) and np.isnan(summary["mCE"])
    assert any("not the 1000 ImageNet-1k classes" in n for n in res.notes)
    assert "centre crop 16" in res.meta["transform"]["oracle"]
    # readable names from labels.txt also match a probe trained with them
    named = GreyOracle(["Dark grey", "Mid grey", "Light"])
    named.levels = GreyOracle().levels
    res2 = evaluate_classifiers({"n": named}, imagenet_c=root, corruptions="fog", severities="2")
    assert res2.cells["top1"].iloc[0] == 0.5


def test_missing_severity_and_class_mismatch_are_clear_errors(tmp_path):
    root = tmp_path / "c"
    _write_class_images(root / "fog" / "1", per_class=1)
    with pytest.raises(DataError, match=r"fog/2 is missing: severity 2 of 'fog'"):
        evaluate_classifiers({"m": GreyOracle()}, imagenet_c=root, corruptions="fog")
    with pytest.raises(DataError, match=r"snow is missing"):
        evaluate_classifiers({"m": GreyOracle()}, imagenet_c=root, corruptions="snow")
    other = GreyOracle(["cat", "dog", "car"])
    with pytest.raises(DataError, match="class 'dark' in .* is not one of the probe's 3 classes"):
        evaluate_classifiers({"m": other}, imagenet_c=root, corruptions="fog", severities="1")
    with pytest.raises(DataError, match="exactly one of --imagenet-c"):
        evaluate_classifiers({"m": other}, corruptions="fog")


def test_on_the_fly_write_then_read_round_trip(tmp_path):
    val, out = tmp_path / "val", tmp_path / "val-c"
    _write_class_images(val, per_class=2)
    model = GreyOracle()
    kw = dict(corruptions="contrast,gaussian_noise", severities="1,5", seed=3, batch_size=4)
    res = evaluate_classifiers({"oracle": model}, val=val, write_c=out, **kw)
    assert len(res.cells) == 4 and (res.cells["n"] == 6).all()
    assert res.summary.iloc[0]["clean_top1"] == 1.0
    # the stored crop is the corruption of the model's crop with the per-image generator (JPEG 85)
    written = out / "gaussian_noise" / "5" / "mid" / "img_1.JPEG"
    assert written.is_file()
    # samples are sorted by class then name: dark 0-1, light 2-3, mid 4-5
    index = 4 + 1
    crop = tensor_to_uint8(model.preprocess(Image.open(val / "mid" / "img_1.png")))
    expected = corrupt(crop, "gaussian_noise", 5, corruption_rng(3, "gaussian_noise", 5, index))
    buf = io.BytesIO()
    Image.fromarray(expected).save(buf, format="JPEG", quality=85, optimize=True)
    assert written.read_bytes() == buf.getvalue()  # exactly the original's JPEG q85 encoding
    # read the written set back in the released layout
    back = evaluate_classifiers(
        {"oracle": model}, imagenet_c=out, corruptions="contrast,gaussian_noise", severities="1,5"
    )
    assert (back.cells["n"] == 6).all()
    # on the fly, the model saw the JPEG q85 round trip: exactly what the written files hold
    merged = res.cells.merge(back.cells, on=["corruption", "severity"])
    assert (merged["top1_x"] == merged["top1_y"]).all()


def test_workers_do_not_change_results(tmp_path):
    val = tmp_path / "val"
    _write_class_images(val, per_class=2)
    # elastic and spatter run parallel OpenCV code, in the parent first (forked workers inherit it)
    kw = dict(val=val, corruptions="shot_noise,glass_blur,elastic_transform,spatter", seed=1)
    kw.update(severities="5", batch_size=3)
    evaluate_classifiers({"m": GreyOracle()}, workers=0, **kw)
    a = evaluate_classifiers({"m": GreyOracle()}, workers=0, **kw).cells
    b = evaluate_classifiers({"m": GreyOracle()}, workers=2, **kw).cells
    assert a.equals(b)


def test_two_models_one_table_and_files(tmp_path):
    val = tmp_path / "val"
    _write_class_images(val, per_class=2)
    models = {"oracle": GreyOracle(), "small": GreyOracle(image_size=8, resize_size=10)}
    res = evaluate_classifiers(models, val=val, corruptions="brightness,saturate", severities="1-2")
    assert list(res.summary["model"]) == ["oracle", "small"]
    assert res.per_corruption().shape == (2, 2)
    text = format_table(res)
    assert "oracle" in text and "small" in text and "brightness" in text
    paths = write_results(res, tmp_path / "out")
    import json

    payload = json.loads(paths["json"].read_text())
    assert len(payload["cells"]) == 8 and payload["meta"]["severities"] == [1, 2]
    assert paths["cells"].read_text().startswith("model,corruption,group,severity,top1,top5,n")


def test_figures(tmp_path):
    from fastdino_cli.figures.corruption import draw_corrupt_eval

    val = tmp_path / "val"
    _write_class_images(val, per_class=1)
    res = evaluate_classifiers({"m": GreyOracle()}, val=val, corruptions="fog,pixelate,saturate")
    paths = draw_corrupt_eval(res, tmp_path / "o", example_image=val / "mid" / "img_0.png")
    for key in ("bars", "severity", "examples"):
        with Image.open(paths[key]) as img:
            assert img.size[0] > 300
    # the examples image defaults to the first image of the run's clean folder
    assert draw_corrupt_eval(res, tmp_path / "p", bars=False, examples=True).keys() == {"examples"}


def test_run_corrupt_eval_is_one_call_that_writes_the_numbers(tmp_path, monkeypatch):
    """One library call loads each checkpoint's classifier, evaluates and writes the CSV/JSON;
    it draws nothing, and an --out that names a file is refused before any work."""
    import fastdino_cli.eval.classifier as classifier
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.eval.corruption.run import run_corrupt_eval

    loaded = []

    def fake_load(path, device="cpu"):
        loaded.append(Path(path).name)
        return GreyOracle()

    monkeypatch.setattr(classifier, "load_probe_classifier", fake_load)
    val = tmp_path / "val"
    _write_class_images(val, per_class=2)
    out = tmp_path / "out"
    kw = dict(val=val, corruptions="fog,saturate", severities="1,3", workers=0, device="cpu")
    result = run_corrupt_eval([tmp_path / "a.pt"], out=out, **kw)
    assert loaded == ["a.pt"] and list(result.summary["model"]) == ["a"]
    assert {k: p.name for k, p in result.files.items()} == {
        "cells": "cells.csv", "summary": "summary.csv", "json": "results.json"
    }  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["cells.csv", "results.json", "summary.csv"]
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_csv(out / "cells.csv"), result.cells)
    assert run_corrupt_eval([tmp_path / "a.pt"], **kw).files == {}  # no out: nothing written
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_corrupt_eval([tmp_path / "b.pt"], out=out / "cells.csv", **kw)
    assert "b.pt" not in loaded


def _run_cli(argv, capsys):
    from fastdino_cli.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_cli_end_to_end_with_a_stored_probe_head(tmp_path, demo_data, capsys, monkeypatch):
    """tiny ViT -> probe head (probe branch) -> corrupt-eval CLI on the demo val folder."""
    from fastdino_cli.eval.probe.run import run_probe
    from tests.probe_helpers import tiny_checkpoint

    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    path = tiny_checkpoint(tmp_path / "final.pt")
    run_probe([path], demo_data.train, demo_data.val, ks=(10,), epochs=1, batch_size=32, seed=0)
    out = tmp_path / "report"
    argv = ["corrupt-eval", str(path), "--val", str(demo_data.val), "--corruptions", "fog,snow"]
    argv += ["--severities", "1,5", "--workers", "0", "--out", str(out), "--examples"]
    code, stdout, err = _run_cli(argv, capsys)
    assert code == 0, err
    assert "fog" in stdout and "clean_top1" in stdout
    assert "mCE not shown: the probe has 10 classes" in stdout
    for name in ("cells.csv", "summary.csv", "results.json", "accuracy_per_corruption.png"):
        assert (out / name).is_file()
    assert (out / "accuracy_vs_severity.png").is_file() and (
        out / "examples_severity3.png"
    ).is_file()
    import pandas as pd

    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 4 and (cells["n"] == 40).all() and cells["top1"].between(0, 1).all()


def test_cli_without_probe_head_is_one_line(tmp_path, demo_data, capsys):
    from tests.probe_helpers import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "x.pt")
    code, _, err = _run_cli(["corrupt-eval", str(path), "--val", str(demo_data.val)], capsys)
    assert code == 2 and "has no probe head" in err and err.strip().count("\n") == 0


class Recorder(nn.Module):
    """Records every batch it is shown (pixels in [0, 1]); the eval transform of a real probe."""

    def __init__(self, image_size: int = 224, resize_size: int = 256):
        super().__init__()
        from fastdino_cli.eval.features import FeatureRecipe, eval_transform

        self.class_names = ["ramp"]
        self.image_size, self.resize_size = image_size, resize_size
        self._t = eval_transform(FeatureRecipe(resize_size, image_size), normalize=False)
        self.seen: list[torch.Tensor] = []

    def preprocess(self, pil):
        return self._t(pil.convert("RGB"))

    def forward_pixels(self, x01):
        self.seen.append(x01.clone())
        return torch.zeros(len(x01), 1)


def _ramp(w: int, h: int) -> Image.Image:
    """Red = column, green = row (0..255 across the image): every pixel says where it is."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


def test_clean_set_is_read_with_resize_256_then_crop_224(tmp_path, capsys):
    """hendrycks' test.py reads clean ImageNet with Resize 256 + CenterCrop 224: a 512 x 384
    ramp must show columns 87..423 of 512 (scale 384/256 = 1.5, crop offset 58.5 px), not the
    centre 224 px (columns 144..367) a crop of the full-size image would show."""
    root, clean = tmp_path / "c", tmp_path / "clean"
    (root / "fog" / "1" / "ramp").mkdir(parents=True)
    _ramp(224, 224).save(root / "fog" / "1" / "ramp" / "a.png")
    (clean / "ramp").mkdir(parents=True)
    _ramp(512, 384).save(clean / "ramp" / "a.png")
    model = Recorder()
    evaluate_classifiers(
        {"m": model}, imagenet_c=root, clean=clean, corruptions="fog", severities="1",
        batch_size=1,
    )  # fmt: skip
    clean_view, corrupted_view = (x[0] for x in model.seen)  # clean is task 0: first batch
    red = clean_view[0].mean(0) * 255  # mean over rows: the column ramp
    green = clean_view[1].mean(1) * 255
    # the field of view by hand: resized to 341 x 256, crop from (58, 16) -> source pixels
    scale, (left, top) = 384 / 256, ((341 - 224) // 2, (256 - 224) // 2)
    src_x0, src_x1 = (left + 0.5) * scale - 0.5, (left + 223.5) * scale - 0.5
    src_y0, src_y1 = (top + 0.5) * scale - 0.5, (top + 223.5) * scale - 0.5
    assert float(red[0]) == pytest.approx(255 * src_x0 / 511, abs=1.5)
    assert float(red[-1]) == pytest.approx(255 * src_x1 / 511, abs=1.5)
    assert float(green[0]) == pytest.approx(255 * src_y0 / 383, abs=1.5)
    assert float(green[-1]) == pytest.approx(255 * src_y1 / 383, abs=1.5)
    # and exactly the model's own eval transform of the file
    expected = model.preprocess(Image.open(clean / "ramp" / "a.png"))
    torch.testing.assert_close(clean_view, expected, atol=1 / 255 + 1e-6, rtol=0)
    # the corrupted 224 px image is still centre-cropped, not resized (it is already 224)
    raw = torch.from_numpy(np.array(Image.open(root / "fog/1/ramp/a.png"))).permute(2, 0, 1)
    torch.testing.assert_close(corrupted_view, raw.float() / 255)
    assert "warning" not in capsys.readouterr().err  # a 224 px probe: nothing to warn about


def test_probe_input_not_224_warns_once_in_crop_mode(tmp_path, capsys):
    root = tmp_path / "c"
    _write_class_images(root / "fog" / "1", per_class=1, size=24)
    evaluate_classifiers(
        {"small": GreyOracle()}, imagenet_c=root, corruptions="fog", severities="1"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "small: the probe's input is 16 px, not 224" in err[0]
    assert "--resize-c" in err[0]
    res = evaluate_classifiers(
        {"small": GreyOracle()}, imagenet_c=root, corruptions="fog", severities="1", resize_c=True
    )
    assert capsys.readouterr().err == "" and "warnings" not in res.meta


def test_on_the_fly_jpeg_round_trip_and_its_switch(tmp_path):
    """--val: the model sees corrupt(crop) after a JPEG q85 round trip; --no-jpeg: without."""
    from fastdino_cli.eval.corruption.data import CorruptedSet, Task, list_labelled_images

    val = tmp_path / "val"
    _write_class_images(val, per_class=1)
    model = GreyOracle()
    samples = list_labelled_images(val)
    tasks = [Task("gaussian_noise", 3)]
    crop = tensor_to_uint8(model.preprocess(Image.open(samples[0].path)))
    noisy = corrupt(crop, "gaussian_noise", 3, corruption_rng(0, "gaussian_noise", 3, 0))
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=85)
    expected = np.asarray(Image.open(buf).convert("RGB"))
    with_jpeg = CorruptedSet(samples, [0] * 3, tasks, lambda p: crop, 0)[0][0]
    without = CorruptedSet(samples, [0] * 3, tasks, lambda p: crop, 0, jpeg=False)[0][0]
    assert np.array_equal(tensor_to_uint8(with_jpeg), expected)
    assert np.array_equal(tensor_to_uint8(without), noisy)
    assert not np.array_equal(expected, noisy)
    res = evaluate_classifiers({"m": model}, val=val, corruptions="fog", severities="1", jpeg=False)
    assert res.meta["jpeg_q85"] is False and "no JPEG step" in res.summary.iloc[0]["benchmark"]


def _imagenet_1k_oracle():
    """A 1000-class model (WordNet ids) for the mCE bookkeeping; its numbers are irrelevant."""
    return GreyOracle(class_names=[f"n{i:08d}" for i in range(1000)])


def test_on_the_fly_mce_is_marked_as_not_the_published_benchmark(tmp_path):
    from fastdino_cli.eval.corruption.run import _summarise

    rows = [
        {"model": "m", "corruption": c, "group": "g", "severity": s, "top1": 0.5, "top5": 0.7,
         "n": 10}
        for c in BENCHMARK for s in range(1, 6)
    ] + [{"model": "m", "corruption": "clean", "group": "clean", "severity": 0, "top1": 0.8,
          "top5": 0.9, "n": 10}]  # fmt: skip
    import pandas as pd

    models = {"m": _imagenet_1k_oracle()}
    fly = _summarise(pd.DataFrame(rows), models, {"mode": "val", "benchmark": "on-the-fly x"})
    released = _summarise(pd.DataFrame(rows), models, {"mode": "imagenet-c"})
    assert fly.summary.iloc[0]["mCE"] == released.summary.iloc[0]["mCE"] > 0
    # table, CSV and JSON say it
    assert "mCE*" in format_table(fly) and "* on-the-fly x" in format_table(fly)
    assert any("not the published ImageNet-C benchmark" in n for n in fly.notes)
    assert "mCE*" not in format_table(released) and released.notes == []
    paths = write_results(fly, tmp_path / "o")
    assert pd.read_csv(paths["summary"])["benchmark"].tolist() == ["on-the-fly x"]
    import json

    payload = json.loads(paths["json"].read_text())
    assert payload["summary"][0]["benchmark"] == "on-the-fly x"
    assert any("not the published" in n for n in payload["notes"])
    assert pd.read_csv(write_results(released, tmp_path / "r")["summary"])[
        "benchmark"
    ].tolist() == ["released ImageNet-C files"]
