"""The stored probe head: entry format, reload, exact reproduction of the reported accuracy."""

from __future__ import annotations

import pytest
import torch

from fastdino_cli import checkpoint as ck
from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.errors import CheckpointError
from fastdino_cli.eval.classifier import ProbeClassifier, load_probe_classifier
from fastdino_cli.eval.probe.run import run_probe
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


@pytest.fixture
def probed(tmp_path, demo_data, monkeypatch):
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    path = tiny_checkpoint(tmp_path / "run" / "final.pt")
    report = run_probe(
        [path], demo_data.train, demo_data.val, ks=(10,), epochs=15, batch_size=32, seed=1
    )
    return path, report


def test_reloaded_head_reproduces_reported_accuracy(probed, demo_data):
    path, report = probed
    model = load_probe_classifier(path)
    assert isinstance(model, ProbeClassifier)
    val = scan_labelled_folder(demo_data.val)
    assert model.class_names == val.class_names
    x01 = torch.stack([model.preprocess(val.load_rgb(i)) for i in range(len(val))])
    assert x01.shape[-1] == model.image_size == 32 and x01.min() >= 0 and x01.max() <= 1
    with torch.no_grad():
        pred = model.forward_pixels(x01).argmax(1)
    acc = 100.0 * (pred == torch.tensor(val.labels)).float().mean().item()
    assert acc == pytest.approx(report.rows[0].linear.val_top1, abs=1e-6)
    stored = ck.load(path)["probe"]
    assert stored["accuracy"]["linear_top1"] == pytest.approx(acc)
    assert stored["recipe"]["crop_size"] == 32 and stored["recipe"]["resize_size"] == 37
    assert stored["head"]["weight"].shape[0] == 10


def test_forward_pixels_is_forward_of_normalised_and_differentiable(probed):
    path, _ = probed
    model = load_probe_classifier(path)
    x01 = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model.forward_pixels(x01)
    x = (x01 - model.mean) / model.std
    torch.testing.assert_close(logits, model(x))
    logits[:, 0].sum().backward()
    assert x01.grad is not None and x01.grad.abs().sum() > 0


def test_out_writes_a_copy_and_leaves_the_original(tmp_path, demo_data, monkeypatch):
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    path = tiny_checkpoint(tmp_path / "a.pt")
    before = path.read_bytes()
    run_probe(
        [path], demo_data.train, demo_data.val, ks=(10,), epochs=1, out=tmp_path / "b" / "c.pt"
    )
    assert path.read_bytes() == before
    assert "probe" in ck.load(tmp_path / "b" / "c.pt")
    assert (tmp_path / "b" / "probe.json").is_file()


def test_missing_head_is_a_one_line_error(tmp_path):
    path = tiny_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"has no probe head; run `fastdino probe .*x.pt"):
        load_probe_classifier(path)
