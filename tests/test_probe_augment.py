"""--augment: heads trained on random views, chosen on the held-out split, stored like the rest."""

from __future__ import annotations

import pytest
import torch

from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.eval.classifier import load_probe_classifier
from fastdino_cli.eval.features import FeatureRecipe
from fastdino_cli.eval.probe.linear_augment import train_transform
from fastdino_cli.eval.probe.run import run_probe
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


def test_train_views_are_random_crops_of_the_crop_size(demo_data):
    img = scan_labelled_folder(demo_data.train).load_rgb(0)
    t = train_transform(FeatureRecipe(resize_size=37, crop_size=32))
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == b.shape == (3, 32, 32) and not torch.allclose(a, b)


def test_augmented_probe_stores_a_head_that_reproduces_val(tmp_path, demo_data, monkeypatch):
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    path = tiny_checkpoint(tmp_path / "m.pt")
    report = run_probe(
        [path], demo_data.train, demo_data.val, ks=(10,), epochs=2, batch_size=32,
        n_last_blocks=(1, 2), augment=True, seed=0,
    )  # fmt: skip
    row = report.rows[0]
    assert report.settings["linear_mode"] == "augmented views"
    assert row.linear.num_fit + row.linear.num_holdout == row.num_train == 80
    assert len(row.linear.holdout_table) == 2 * 2 * 13
    model = load_probe_classifier(path)
    val = scan_labelled_folder(demo_data.val)
    x01 = torch.stack([model.preprocess(val.load_rgb(i)) for i in range(len(val))])
    with torch.no_grad():
        pred = model.forward_pixels(x01).argmax(1)
    acc = 100.0 * (pred == torch.tensor(val.labels)).float().mean().item()
    assert acc == pytest.approx(row.linear.val_top1, abs=1e-6)
