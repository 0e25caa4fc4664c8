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


# ---- one precision policy (issue 20 item 4) ------------------------------------------------


def test_probe_entry_records_the_policy_of_its_device():
    from fastdino_cli.eval.classifier import make_probe_entry, stored_precision
    from fastdino_cli.eval.features import FP32, FeatureRecipe, Precision

    kw = dict(
        weight=torch.zeros(2, 4), bias=torch.zeros(2), n_last_blocks=1, avgpool=False, lr=0.1,
        recipe=FeatureRecipe(37, 32), class_names=["a", "b"], accuracy={},
    )  # fmt: skip
    gpu = make_probe_entry(protocol={"device": "cuda:0"}, **kw)
    assert gpu["precision"]["storage"] == "float16"
    assert gpu["precision"]["autocast"] in ("bfloat16", "float16")
    assert make_probe_entry(protocol={"device": "cpu"}, **kw)["precision"] == FP32.to_dict()
    # entries written before the policy was recorded: the policy of their protocol's device
    old = make_probe_entry(protocol={"device": "cuda"}, **kw)
    del old["precision"]
    assert stored_precision(old) == Precision.from_dict(gpu["precision"])
    assert stored_precision({"protocol": {}}) == FP32


@pytest.mark.slow
def test_corrupt_eval_clean_accuracy_equals_the_probe_val_accuracy(
    tmp_path, demo_data, monkeypatch
):
    """The probe's features are extracted under bf16 autocast and stored in fp16 (forced on CPU
    here, as on a GPU); every classifier rebuilt from the head must classify the same way."""
    import shutil

    from fastdino_cli.eval import features
    from fastdino_cli.eval.corruption.run import run_corrupt_eval
    from fastdino_cli.eval.features import FP32, Precision, extract_features

    gpu_like = Precision(autocast="bfloat16", storage="float16")
    monkeypatch.setattr(features, "precision_for", lambda device: gpu_like)
    monkeypatch.setenv("FASTDINO_CACHE", str(tmp_path / "cache"))
    path = tiny_checkpoint(tmp_path / "final.pt")
    report = run_probe(
        [path], demo_data.train, demo_data.val, ks=(10,), epochs=15, batch_size=32, seed=1,
        extract_batch_size=64,
    )  # fmt: skip
    val_top1 = report.rows[0].linear.val_top1
    assert ck.load(path)["probe"]["precision"] == gpu_like.to_dict()
    clf = load_probe_classifier(path)
    assert clf.precision == gpu_like
    # logits: the stored head on the probe's own (cached) val features, against the classifier
    val = scan_labelled_folder(demo_data.val)
    feats = extract_features(clf.backbone, val, clf.recipe, n_blocks=4)  # what the probe read
    assert feats.cached and feats.cls.dtype == torch.float16
    x = features.head_input(feats.cls.float(), feats.patch_mean.float(), clf.n_last_blocks,
                            clf.avgpool)  # fmt: skip
    expected = clf.head(x)
    x01 = torch.stack([clf.preprocess(val.load_rgb(i)) for i in range(len(val))])
    with torch.no_grad():
        got = clf.forward_pixels(x01)
        clf.precision = FP32  # what corrupt-eval / fourier / gradcam ran before
        fp32 = clf.forward_pixels(x01)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (fp32 - expected).abs().max() > 1e-4  # the policy is what makes them equal
    # corrupt-eval on the same folder: on-the-fly mode and released mode with --clean
    kw = dict(corruptions="brightness", severities="1", workers=0, device="cpu", batch_size=64)
    fly = run_corrupt_eval([path], val=demo_data.val, **kw)
    root = tmp_path / "c"
    shutil.copytree(demo_data.val, root / "brightness" / "1")
    released = run_corrupt_eval([path], imagenet_c=root, clean=demo_data.val, **kw)
    for result in (fly, released):
        assert 100 * result.summary.iloc[0]["clean_top1"] == pytest.approx(val_top1, abs=1e-9)
