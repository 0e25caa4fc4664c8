"""Every user mistake is ONE line on stderr naming the culprit, exit code 2, no traceback.

Table-driven over ``fastdino_cli.cli.main([...])``: bad dataset paths and folders, bad image
files, bad checkpoints (wrong kind, newer version, truncated, malicious pickle), preset / key
typos, out-of-range values, an ImageNet-C root with missing severities and a probe head whose
classes are not those of the evaluation data. Images that are merely unusual (CMYK, grayscale,
16-bit, palette with transparency, 6000x4000) must be HANDLED by every loader, not rejected.

Issue 17: non-finite config values and diverging weights; a second table of commands that must
refuse without changing one byte of what the user owns (their own train/val folders, a finished
run whose checkpoint.pt was deleted), a re-run on a full disk that keeps the good results, and a
symlink loop in a data folder that every scanner reads once.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastdino_cli import checkpoint as ck
from fastdino_cli.cli import main
from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import FastdinoError
from fastdino_cli.eval.classifier import make_probe_entry
from fastdino_cli.eval.features import FeatureRecipe
from fastdino_cli.model.vit import build_vit

pytestmark = pytest.mark.usefixtures("one_thread")

MARKER = "fastdino_pwned_marker"


class _Evil:
    """Unpickling this would run a shell command; ``weights_only`` loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png(path: Path, color=(120, 40, 200), size=(32, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _labelled(root: Path, classes: list[str], per_class: int = 3) -> Path:
    for ci, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", color=(20 * ci, 100, 10 * i))
    return root


@dataclass
class World:
    """Every bad (and good) input the table refers to, built once per module."""

    tmp: Path
    train: Path
    val: Path
    ckpt: Path
    noprobe: Path
    classes: list[str]


@pytest.fixture(scope="module")
def w(tmp_path_factory, demo_data) -> World:
    tmp = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2
    )
    model = build_vit(cfg)
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    base = ck.make_checkpoint(
        config={"model": cfg.model_dump(mode="python")}, arch=model.arch_dict(), teacher=teacher
    )
    noprobe = ck.save(base, tmp / "noprobe.pt")
    classes = list(demo_data.class_names)
    classes_sorted = sorted(classes)
    probe = make_probe_entry(
        weight=torch.randn(len(classes), 32),
        bias=torch.zeros(len(classes)),
        n_last_blocks=1,
        avgpool=False,
        lr=0.1,
        recipe=FeatureRecipe(resize_size=36, crop_size=32),
        class_names=classes_sorted,
        accuracy={"val": 0.1},
        protocol={},
    )
    ckpt = ck.save({**base, "probe": probe}, tmp / "probed.pt")
    # checkpoints that must be refused
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp / "wrong_kind.pt")
    torch.save({**base, "version": ck.VERSION + 1}, tmp / "newer.pt")
    data = ckpt.read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": "fastdino", "evil": _Evil(tmp / MARKER)}, tmp / "malicious.pt")
    (tmp / "text.pt").write_text("not a checkpoint\n")
    run = tmp / "run_wrong_kind"
    run.mkdir()
    shutil.copy(tmp / "wrong_kind.pt", run / "checkpoint.pt")
    run = tmp / "run_truncated"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    shutil.copy(ckpt, run / "checkpoints" / "step_00000004.pt")
    # folders
    (tmp / "empty").mkdir()
    (tmp / "texts").mkdir()
    (tmp / "texts" / "readme.txt").write_text("no images here")
    (tmp / "afile.png").write_bytes(b"")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "zero.png").write_bytes(b"")
    (broken / "text.jpg").write_text("this is not a jpeg")
    good = tmp / "good.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good, quality=95)
    (broken / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    _labelled(tmp / "one_class", ["only"])
    _labelled(tmp / "val_extra", [*classes_sorted, "zebra"], per_class=1)
    _labelled(tmp / "other_classes", ["ant", "bee"], per_class=2)
    _labelled(tmp / "empty_class", ["a", "b"])
    shutil.rmtree(tmp / "empty_class" / "b")
    (tmp / "empty_class" / "b").mkdir()
    _labelled(tmp / "flat", [])
    _png(tmp / "flat" / "loose.png")
    for kind, payload in (
        ("truncated", good.read_bytes()[:300]),
        ("zero", b""),
        ("text", b"GIF89a? no"),
    ):
        sub = _labelled(tmp / f"lab_{kind}", ["a", "b"], per_class=2)
        (sub / "b" / f"bad_{kind}.jpg").write_bytes(payload)
    sub = _labelled(tmp / "val_with_zero_byte", classes_sorted, per_class=1)
    (sub / classes_sorted[-1] / "zero.png").write_bytes(b"")
    # ImageNet-C root with severities 1-2 of one corruption only
    for sev in (1, 2):
        _labelled(tmp / "imagenet_c" / "gaussian_noise" / str(sev), classes_sorted[:2], 1)
    (tmp / "bad.yaml").write_text("optim: [unclosed\n")
    # run directories whose config.yaml is not a config; an --out that is a file
    (tmp / "run_garbage_config").mkdir()
    (tmp / "run_garbage_config" / "config.yaml").write_text("optim: [unclosed\n")
    (tmp / "run_empty_config").mkdir()
    (tmp / "run_empty_config" / "config.yaml").write_text("")
    (tmp / "out_is_a_file.txt").write_text("my notes\n")
    return World(tmp, Path(demo_data.train), Path(demo_data.val), ckpt, noprobe, classes_sorted)


def _pretrain(w: World, data, *extra: str) -> list[str]:
    out = w.tmp / "runs" / f"r{abs(hash((str(data), extra))) % 10**8}"
    return ["pretrain", "--preset", "demo", "--out", str(out), f"data.train={data}", *extra]


def _pretrain_into(w: World, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--preset", "demo", "--out", str(out), f"data.train={w.train}", *extra]


TINY_RUN = (
    "train.batch_size_per_gpu=5",
    "data.num_workers=0",
    "crops.local_crops_number=1",
    "model.depth=1",
)
"""Overrides that make a demo-preset pretrain take a second or two."""


def _metrics_run(w: World, name: str, content: bytes) -> Path:
    """A run folder whose metrics.jsonl holds ``content`` (and a checkpoint beside it)."""
    run = w.tmp / "metrics_runs" / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_bytes(content)
    shutil.copy(w.ckpt, run / "final.pt")
    return run


def _fourier(w: World) -> list[str]:
    return ["fourier-heatmap", str(w.ckpt), "--data", str(w.val), "--out", str(w.tmp / "f_out")]


GOOD_METRICS = b'{"step": 0, "loss": 1.0, "lr": 0.1, "global_crops_size": 32}\n'


# (id, argv builder, substrings the one line must contain)
CASES: list[tuple[str, Callable[[World], list[str]], Callable[[World], list[str]]]] = [
    # presets, keys, values
    ("preset-typo", lambda w: ["presets", "show", "demoo"], lambda w: ["'demoo'", "'demo'"]),
    (
        "key-typo",
        lambda w: ["presets", "show", "demo", "optim.base_lrr=1"],
        lambda w: ["optim.base_lrr", "did you mean 'optim.base_lr'"],
    ),
    (
        "section-typo",
        lambda w: ["presets", "show", "demo", "optimm.base_lr=1"],
        lambda w: ["optimm", "'optim'"],
    ),
    (
        "negative-lr",
        lambda w: ["presets", "show", "demo", "optim.base_lr=-1e-3"],
        lambda w: ["optim.base_lr", "-0.001"],
    ),
    (
        "stages-not-increasing",
        lambda w: ["presets", "show", "demo", "curriculum.stages=[{end: 0.8}, {end: 0.5}]"],
        lambda w: ["curriculum", "[0.8, 0.5]"],
    ),
    (
        "last-stage-not-1",
        lambda w: ["presets", "show", "demo", "curriculum.stages=[{end: 0.5}]"],
        lambda w: ["curriculum", "1.0", "0.5"],
    ),
    (
        "crop-smaller-than-patch",
        lambda w: ["presets", "show", "demo", "crops.global_crops_size=6"],
        lambda w: ["crops.global_crops_size=6", "model.patch_size=8"],
    ),
    (
        "stage-crop-smaller-than-patch",
        lambda w: [
            "presets",
            "show",
            "demo",
            "curriculum.stages=[{end: 1.0, local_crops_size: 4}]",
        ],
        lambda w: ["curriculum.stages.0.local_crops_size=4", "smaller than model.patch_size=8"],
    ),
    (
        "scale-swapped",
        lambda w: ["presets", "show", "demo", "crops.global_crops_scale=[0.9, 0.3]"],
        lambda w: ["crops.global_crops_scale", "[0.9, 0.3]"],
    ),
    (
        "mask-ratio-swapped",
        lambda w: ["presets", "show", "demo", "ibot.mask_ratio_min_max=[0.5, 0.1]"],
        lambda w: ["ibot.mask_ratio_min_max"],
    ),
    (
        "bad-literal",
        lambda w: ["presets", "show", "demo", "train.batch_size_per_gpu=lots"],
        lambda w: ["train.batch_size_per_gpu", "lots"],
    ),
    (
        "config-file-missing",
        lambda w: ["presets", "show", "demo", "--config", str(w.tmp / "nope.yaml")],
        lambda w: [str(w.tmp / "nope.yaml")],
    ),
    (
        "config-file-bad-yaml",
        lambda w: ["presets", "show", "demo", "--config", str(w.tmp / "bad.yaml")],
        lambda w: [str(w.tmp / "bad.yaml"), "YAML"],
    ),
    # pretraining data
    (
        "train-missing",
        lambda w: _pretrain(w, w.tmp / "nowhere"),
        lambda w: [str(w.tmp / "nowhere"), "does not exist"],
    ),
    ("train-empty", lambda w: _pretrain(w, w.tmp / "empty"), lambda w: [str(w.tmp / "empty")]),
    (
        "train-not-a-folder",
        lambda w: _pretrain(w, w.tmp / "afile.png"),
        lambda w: [str(w.tmp / "afile.png"), "not a folder"],
    ),
    (
        "train-no-images",
        lambda w: _pretrain(w, w.tmp / "texts"),
        lambda w: [str(w.tmp / "texts"), "no image files"],
    ),
    (
        "train-only-broken-images",
        lambda w: _pretrain(w, w.tmp / "broken"),
        lambda w: [str(w.tmp / "broken"), "none of the 3"],
    ),
    (
        "train-run-dir-holds-foreign-checkpoint",
        lambda w: ["pretrain", "--preset", "demo", "--out", str(w.tmp / "run_wrong_kind")],
        lambda w: [str(w.tmp / "run_wrong_kind" / "checkpoint.pt"), "not a fastdino checkpoint"],
    ),
    (
        "train-run-dir-checkpoint-damaged",
        lambda w: ["pretrain", "--preset", "demo", "--out", str(w.tmp / "run_truncated")],
        lambda w: [
            str(w.tmp / "run_truncated" / "checkpoint.pt"),
            "truncated",
            f"copy {w.tmp / 'run_truncated' / 'checkpoints' / 'step_00000004.pt'} over it",
        ],
    ),
    (
        "pretrain-no-preset",
        lambda w: ["pretrain", "--out", str(w.tmp / "fresh")],
        lambda w: ["--preset", str(w.tmp / "fresh"), "holds no run to continue"],
    ),
    # issue 17 items 13 and 21: the run directory or its config.yaml is not what it should be
    (
        "pretrain-out-with-a-garbage-config",
        lambda w: ["pretrain", "--out", str(w.tmp / "run_garbage_config")],
        lambda w: [str(w.tmp / "run_garbage_config" / "config.yaml"), "is not valid YAML"],
    ),
    (
        "pretrain-preset-into-a-run-with-a-garbage-config",
        lambda w: _pretrain_into(w, w.tmp / "run_garbage_config"),
        lambda w: [str(w.tmp / "run_garbage_config" / "config.yaml"), "restore it, or delete"],
    ),
    (
        "pretrain-out-with-an-empty-config",
        lambda w: ["pretrain", "--out", str(w.tmp / "run_empty_config")],
        lambda w: [str(w.tmp / "run_empty_config" / "config.yaml"), "is empty"],
    ),
    (
        "pretrain-out-is-a-file",
        lambda w: _pretrain_into(w, w.tmp / "out_is_a_file.txt"),
        lambda w: [str(w.tmp / "out_is_a_file.txt"), "is a file, not a folder", "--out"],
    ),
    (
        "pretrain-out-under-a-file",
        lambda w: _pretrain_into(w, w.tmp / "out_is_a_file.txt" / "run"),
        lambda w: ["cannot be created", f"{w.tmp / 'out_is_a_file.txt'} is a file"],
    ),
    (
        "pretrain-resume-a-folder-that-does-not-exist",
        lambda w: ["pretrain", "--out", str(w.tmp / "no_such_run"), "--resume"],
        lambda w: [f"nothing to resume in {w.tmp / 'no_such_run'}: it does not exist"],
    ),
    (
        "pretrain-resume-a-folder-without-a-run",
        lambda w: ["pretrain", "--out", str(w.tmp / "empty"), "--resume"],
        lambda w: [f"nothing to resume in {w.tmp / 'empty'}: it holds no config.yaml"],
    ),
    # checkpoints
    *[
        (
            f"checkpoint-{name}",
            lambda w, n=name: ["checkpoint", "info", str(w.tmp / f"{n}.pt")],
            lambda w, n=name, m=msg: [str(w.tmp / f"{n}.pt"), m],
        )
        for name, msg in (
            ("wrong_kind", "not a fastdino checkpoint"),
            ("newer", "newer than this fastdino"),
            ("truncated", "truncated or corrupt"),
            ("malicious", "references posix.system"),
            ("text", "not a readable torch checkpoint"),
            ("missing", "does not exist"),
        )
    ],
    (
        "checkpoint-is-a-folder",
        lambda w: ["checkpoint", "info", str(w.tmp / "empty")],
        lambda w: [str(w.tmp / "empty"), "folder"],
    ),
    (
        "probe-malicious-checkpoint",
        lambda w: [
            "probe",
            str(w.tmp / "malicious.pt"),
            "--train",
            str(w.train),
            "--val",
            str(w.val),
        ],
        lambda w: [str(w.tmp / "malicious.pt"), "arbitrary code"],
    ),
    # labelled folders for probes and evaluations
    (
        "probe-train-missing",
        lambda w: ["probe", str(w.ckpt), "--train", str(w.tmp / "nowhere"), "--val", str(w.val)],
        lambda w: [str(w.tmp / "nowhere")],
    ),
    (
        "probe-one-class",
        lambda w: ["probe", str(w.ckpt), "--train", str(w.tmp / "one_class"), "--val", str(w.val)],
        lambda w: [str(w.tmp / "one_class"), "single class"],
    ),
    (
        "probe-val-class-not-in-train",
        lambda w: [
            "probe",
            str(w.ckpt),
            "--train",
            str(w.train),
            "--val",
            str(w.tmp / "val_extra"),
        ],
        lambda w: ["only in val: zebra"],
    ),
    (
        "probe-class-folder-without-images",
        lambda w: [
            "probe",
            str(w.ckpt),
            "--train",
            str(w.tmp / "empty_class"),
            "--val",
            str(w.val),
        ],
        lambda w: [str(w.tmp / "empty_class"), "without images (b)"],
    ),
    (
        "probe-images-not-in-class-folders",
        lambda w: ["probe", str(w.ckpt), "--train", str(w.tmp / "flat"), "--val", str(w.val)],
        lambda w: [str(w.tmp / "flat"), "one sub-folder per class"],
    ),
    *[
        (
            f"probe-{kind}-image",
            lambda w, k=kind: [
                "probe",
                str(w.noprobe),
                "--train",
                str(w.tmp / f"lab_{k}"),
                "--val",
                str(w.tmp / f"lab_{k}"),
                "--no-write",
                "--no-cache",
                "--epochs",
                "1",
            ],
            lambda w, k=kind: [str(w.tmp / f"lab_{k}" / "b" / f"bad_{k}.jpg")],
        )
        for kind in ("truncated", "zero", "text")
    ],
    (
        "corrupt-eval-broken-image-in-a-worker",
        lambda w: [
            "corrupt-eval",
            str(w.ckpt),
            "--val",
            str(w.tmp / "val_with_zero_byte"),
            "--corruptions",
            "gaussian_noise",
            "--severities",
            "1",
            "--workers",
            "1",
            "--no-figures",
            "--out",
            str(w.tmp / "ce_out0"),
        ],
        lambda w: [str(w.tmp / "val_with_zero_byte" / w.classes[-1] / "zero.png")],
    ),
    # ImageNet-C and probe heads
    (
        "imagenet-c-missing-severity",
        lambda w: [
            "corrupt-eval",
            str(w.ckpt),
            "--imagenet-c",
            str(w.tmp / "imagenet_c"),
            "--corruptions",
            "gaussian_noise",
            "--out",
            str(w.tmp / "ce_out1"),
        ],
        lambda w: [str(w.tmp / "imagenet_c" / "gaussian_noise" / "3"), "--severities"],
    ),
    (
        "imagenet-c-missing-corruption",
        lambda w: [
            "corrupt-eval",
            str(w.ckpt),
            "--imagenet-c",
            str(w.tmp / "imagenet_c"),
            "--corruptions",
            "fog",
            "--severities",
            "1",
            "--out",
            str(w.tmp / "ce_out2"),
        ],
        lambda w: [str(w.tmp / "imagenet_c" / "fog"), "--corruptions"],
    ),
    (
        "corrupt-eval-no-probe-head",
        lambda w: ["corrupt-eval", str(w.noprobe), "--val", str(w.val), "--out", str(w.tmp / "o")],
        lambda w: [str(w.noprobe), "no probe head", "fastdino probe"],
    ),
    (
        "corrupt-eval-classes-not-the-probe's",
        lambda w: [
            "corrupt-eval",
            str(w.ckpt),
            "--val",
            str(w.tmp / "other_classes"),
            "--out",
            str(w.tmp / "ce_out3"),
        ],
        lambda w: ["'ant'", str(w.tmp / "other_classes"), "probe"],
    ),
    (
        "fourier-classes-not-the-probe's",
        lambda w: [
            "fourier-heatmap",
            str(w.ckpt),
            "--data",
            str(w.tmp / "other_classes"),
            "--out",
            str(w.tmp / "fourier_out"),
        ],
        lambda w: ["ant", "probe"],
    ),
    (
        "gradcam-classes-not-the-probe's",
        lambda w: [
            "gradcam",
            str(w.ckpt),
            "--data",
            str(w.tmp / "other_classes"),
            "--per-class",
            "1",
            "--target",
            "true",
            "--out",
            str(w.tmp / "gc_out2"),
        ],
        lambda w: ["'ant'", str(w.ckpt)],
    ),
    (
        "gradcam-unknown-class-target",
        lambda w: [
            "gradcam",
            str(w.ckpt),
            "--images",
            str(w.tmp / "other_classes" / "ant"),
            "--target",
            "class:zebra",
            "--out",
            str(w.tmp / "gc_out3"),
        ],
        lambda w: ["zebra"],
    ),
    (
        "gradcam-broken-image",
        lambda w: [
            "gradcam",
            str(w.ckpt),
            "--images",
            str(w.tmp / "broken" / "truncated.jpg"),
            "--out",
            str(w.tmp / "gc_out"),
        ],
        lambda w: [str(w.tmp / "broken" / "truncated.jpg")],
    ),
    (
        "gradcam-missing-image",
        lambda w: ["gradcam", str(w.ckpt), "--images", str(w.tmp / "nope.png")],
        lambda w: [str(w.tmp / "nope.png")],
    ),
    # non-finite numbers (issue 17): every float key, and a run length that overflows
    (
        "lr-inf",
        lambda w: ["presets", "show", "demo", "optim.base_lr=.inf"],
        lambda w: ["optim.base_lr", "finite", "inf"],
    ),
    (
        "epochs-inf",
        lambda w: ["presets", "show", "demo", "optim.epochs=.inf"],
        lambda w: ["optim.epochs", "finite", "inf"],
    ),
    (
        "nan-inside-a-range",
        lambda w: ["presets", "show", "demo", "crops.global_crops_scale=[0.3, .nan]"],
        lambda w: ["crops.global_crops_scale.1", "nan"],
    ),
    (
        "epochs-overflow",
        lambda w: ["presets", "show", "demo", "optim.epochs=1e306"],
        lambda w: ["optim.epochs=1e+306", "lower optim.epochs"],
    ),
    (
        "pretrain-lr-that-makes-the-weights-infinite",
        lambda w: _pretrain(w, w.train, *TINY_RUN, "optim.base_lr=1e30", "train.max_steps=3"),
        lambda w: ["made the weights non-finite", "lower optim.base_lr"],
    ),
    # issue 17 item 16: crop sizes that contradict each other
    (
        "global-crop-smaller-than-local-crop",
        lambda w: [
            "presets",
            "show",
            "demo",
            "curriculum.stages=[{end: 1.0}]",  # one stage that uses crops.*
            "crops.local_crops_size=80",
        ],
        lambda w: ["crops.global_crops_size=64", "crops.local_crops_size=80"],
    ),
    (
        "stage-global-crop-smaller-than-its-local-crop",
        lambda w: _pretrain(w, w.train, "curriculum.stages.1.local_crops_size=80"),
        lambda w: [
            "curriculum.stages.1.global_crops_size=64",
            "curriculum.stages.1.local_crops_size=80",
        ],
    ),
    (
        "data-demo-onto-a-file",
        lambda w: ["data", "demo", str(w.tmp / "afile.png")],
        lambda w: [str(w.tmp / "afile.png"), "is a file"],
    ),
    # plot-metrics on a log that is not one, or onto a file that is not a figure (issue 17)
    (
        "plot-metrics-record-without-a-step",
        lambda w: ["plot-metrics", str(_metrics_run(w, "nostep", GOOD_METRICS + b"[1, 2]\n"))],
        lambda w: [str(w.tmp / "metrics_runs" / "nostep" / "metrics.jsonl"), "line 2", "'step'"],
    ),
    (
        "plot-metrics-binary-log",
        lambda w: ["plot-metrics", str(_metrics_run(w, "binary", b"\x89\xd0\xff" * 50))],
        lambda w: [str(w.tmp / "metrics_runs" / "binary" / "metrics.jsonl"), "not text"],
    ),
    (
        "plot-metrics-onto-a-checkpoint",
        lambda w: ["plot-metrics", str(_metrics_run(w, "ok", GOOD_METRICS)), "--out", str(w.ckpt)],
        lambda w: [f"--out {w.ckpt}", ".png", "nothing was written"],
    ),
    (
        "plot-metrics-onto-a-folder",
        lambda w: ["plot-metrics", str(_metrics_run(w, "ok", GOOD_METRICS)), "--out", str(w.tmp)],
        lambda w: [f"--out {w.tmp} is a folder"],
    ),
    # evaluation sizes and output folders checked before any work (issue 17)
    (
        "fourier-size-negative",
        lambda w: [*_fourier(w), "--size", "-3"],
        lambda w: ["--size -3", "positive multiple of its patch size 8", "crop size 32"],
    ),
    (
        "fourier-size-zero-is-not-the-default",
        lambda w: [*_fourier(w), "--size", "0"],
        lambda w: ["--size 0", "positive multiple of its patch size 8", "leave --size out"],
    ),
    (
        "corrupt-eval-out-is-a-checkpoint",
        lambda w: ["corrupt-eval", str(w.ckpt), "--val", str(w.val), "--out", str(w.ckpt)],
        lambda w: [f"--out {w.ckpt} is a file", "nothing was written"],
    ),
    (
        "gradcam-out-is-a-checkpoint",
        lambda w: ["gradcam", str(w.ckpt), "--data", str(w.val), "--out", str(w.ckpt)],
        lambda w: [f"--out {w.ckpt} is a file"],
    ),
    (
        "report-out-is-a-checkpoint",
        lambda w: ["report", str(_metrics_run(w, "ok", GOOD_METRICS)), "--out", str(w.ckpt)],
        lambda w: [f"--out {w.ckpt} is a file"],
    ),
]


def refused_in_one_line(args: list[str], capsys, culprits) -> str:
    """``fastdino ARGS`` exits 2 with exactly one ``fastdino: error:`` line on stderr, no
    traceback, naming every culprit; returns that line."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    err = out.err
    assert e.value.code == 2, (args, out.out[-500:], err[-2000:])
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdino: error: "), err
    for culprit in culprits:
        assert culprit in lines[0], (culprit, lines[0])
    return lines[0]


@pytest.mark.parametrize(("argv", "culprits"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_exit_2(w, capsys, argv, culprits):
    refused_in_one_line(argv(w), capsys, culprits(w))
    assert not (w.tmp / MARKER).exists()  # the malicious pickle never ran


def test_debug_shows_the_traceback(w):
    with pytest.raises(FastdinoError, match="newer than this fastdino"):
        main(["--debug", "checkpoint", "info", str(w.tmp / "newer.pt")])


@pytest.mark.parametrize("command", ["pretrain", "probe"])
def test_unreadable_dataset_folder(w, capsys, monkeypatch, command):
    locked = w.tmp / f"locked_{command}"
    _png(locked / "a" / "x.png")
    _png(locked / "b" / "y.png")
    if os.geteuid() == 0:  # root reads anything: make listing the folder fail as chmod would
        real = os.scandir

        def scandir(path="."):
            if Path(path) == locked / "b":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        (locked / "b").chmod(0)
    args = _pretrain(w, locked) if command == "pretrain" else ["probe", str(w.ckpt)]
    if command == "probe":
        args += ["--train", str(locked), "--val", str(locked)]
    try:
        with pytest.raises(SystemExit) as e:
            main(args)
    finally:
        (locked / "b").chmod(0o755)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert str(locked / "b") in err and "Permission denied" in err, err


def test_a_diverging_run_writes_no_checkpoint_of_nan_weights(w, capsys):
    """optim.base_lr=1e30: the first update makes the weights infinite; the run stops there
    instead of skipping every later step and finishing with a NaN final.pt."""
    args = _pretrain(w, w.train, *TINY_RUN, "optim.base_lr=1e30", "train.max_steps=3")
    run = Path(args[args.index("--out") + 1])
    with pytest.raises(SystemExit):
        main(args)
    assert "made the weights non-finite" in capsys.readouterr().err
    assert not (run / "final.pt").exists() and not (run / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------
# nothing the user owns is lost (issue 17): a one-line refusal, and every file under the
# protected folder has the same bytes afterwards
# --------------------------------------------------------------------------------------------


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest)."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(w) -> tuple[Path, list[str]]:
    """A run as the CLI leaves it (final.pt, checkpoint.pt, checkpoints/, metrics.jsonl) and the
    command that made it."""
    args = _pretrain(w, w.train, *TINY_RUN, "train.max_steps=2", "train.checkpoint_period=1")
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)
    return Path(args[args.index("--out") + 1]), args


def _run_copy(finished_run, name: str, remove: tuple[str, ...]) -> tuple[Path, list[str]]:
    src, args = finished_run
    run = src.parent / name
    shutil.copytree(src, run)
    for rel in remove:
        target = run / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    args = list(args)
    args[args.index("--out") + 1] = str(run)
    return run, args


def _user_folders(root: Path, *subdirs: str) -> Path:
    for sub in subdirs:
        _png(root / sub / "mine" / "holiday.png", color=(1, 2, 3))
    (root / "notes.txt").write_text("my own notes\n")
    return root


def _demo_data_over_user_folders(w, finished_run):
    root = _user_folders(w.tmp / "user_data", "train", "val")
    return ["data", "demo", str(root), "--size", "16"], root, [
        str(root), "not built by fastdino", ".fastdino-demo-data", "nothing was changed"
    ]  # fmt: skip


def _demo_over_user_data(w, finished_run):
    root = _user_folders(w.tmp / "user_demo_out" / "data", "train")
    return ["demo", "--out", str(root.parent)], root.parent, [str(root), "not built by fastdino"]


def _finished_run_without_checkpoint(w, finished_run):
    run, args = _run_copy(finished_run, "no_checkpoint", ("checkpoint.pt",))
    return args, run, [str(run), "finished run", "no checkpoint.pt", "choose another --out"]


def _run_with_only_periodic_copies(w, finished_run):
    run, args = _run_copy(finished_run, "only_copies", ("checkpoint.pt", "final.pt"))
    copy = run / "checkpoints" / "step_00000002.pt"
    return args, run, [f"copy {copy} to {run / 'checkpoint.pt'} to resume from step 2"]


def _run_with_only_its_log(w, finished_run):
    run, args = _run_copy(finished_run, "only_log", ("checkpoint.pt", "final.pt", "checkpoints"))
    return args, run, [str(run), "metrics.jsonl up to step 1", "choose another --out"]


def _plot_metrics_onto_the_runs_checkpoint(w, finished_run):
    run, _ = _run_copy(finished_run, "plot_onto_final", ())
    return ["plot-metrics", str(run), "--out", str(run / "final.pt")], run, [str(run / "final.pt")]


def _plot_metrics_onto_a_png_that_is_not_one(w, finished_run):
    run, _ = _run_copy(finished_run, "plot_onto_fake_png", ())
    shutil.copy(run / "final.pt", run / "curves.png")  # a checkpoint renamed by mistake
    target = run / "curves.png"
    return ["plot-metrics", str(run), "--out", str(target)], run, [str(target), "not a .png image"]


def _run_whose_config_is_garbage(w, finished_run):
    run, args = _run_copy(finished_run, "garbage_config", ())
    (run / "config.yaml").write_text("train: {seed: [unclosed\n")
    return args, run, [str(run / "config.yaml"), "is not valid YAML", "restore it, or delete it"]


def _resume_a_run_whose_config_is_garbage(w, finished_run):
    run, _ = _run_copy(finished_run, "garbage_config_resume", ())
    (run / "config.yaml").write_text("\x00\x01 not yaml: [\n")
    return ["pretrain", "--out", str(run), "--resume"], run, [str(run / "config.yaml")]


def _out_is_a_users_file(w, finished_run):
    root = _user_folders(w.tmp / "user_notes", "photos")
    notes = root / "notes.txt"
    return _pretrain_into(w, notes), root, [str(notes), "is a file, not a folder"]


DATA_LOSS_CASES = [
    ("data-demo-over-the-users-train-and-val", _demo_data_over_user_folders),
    ("demo-over-the-users-data-folder", _demo_over_user_data),
    ("pretrain-over-a-finished-run-whose-checkpoint-was-deleted", _finished_run_without_checkpoint),
    ("pretrain-over-a-run-with-only-periodic-copies", _run_with_only_periodic_copies),
    ("pretrain-over-a-run-with-only-its-metrics", _run_with_only_its_log),
    ("plot-metrics-onto-the-runs-final-pt", _plot_metrics_onto_the_runs_checkpoint),
    ("plot-metrics-onto-a-png-that-is-a-checkpoint", _plot_metrics_onto_a_png_that_is_not_one),
    ("pretrain-over-a-run-whose-config-is-garbage", _run_whose_config_is_garbage),
    ("pretrain-resume-a-run-whose-config-is-garbage", _resume_a_run_whose_config_is_garbage),
    ("pretrain-out-is-a-users-file", _out_is_a_users_file),
]


@pytest.mark.parametrize(
    "case", [c[1] for c in DATA_LOSS_CASES], ids=[c[0] for c in DATA_LOSS_CASES]
)
def test_nothing_the_user_owns_is_changed(w, finished_run, capsys, case):
    args, protected, culprits = case(w, finished_run)
    before = tree_hashes(protected)
    assert before
    refused_in_one_line(args, capsys, culprits)
    assert tree_hashes(protected) == before


def test_sigint_checkpoints_and_says_how_to_resume(w, tmp_path):
    """Ctrl-C (issue 17 item 20): the step in progress finishes, checkpoint.pt is written, the
    process exits 130 with one line naming the step and the command that resumes, and that
    command continues from there."""
    import shlex
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    argv = _pretrain_into(w, out, *TINY_RUN, "train.max_steps=20", "train.checkpoint_period=100")
    gate = tmp_path / "gate"
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(  # held at step 2 until the signal has reached the loop
        [sys.executable, str(root / "tests" / "_pausing_pretrain.py"), "2", str(gate), *argv],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    while not (gate / "paused").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 600
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    step = ck.load(out / "checkpoint.pt")["train_state"]["step"]
    assert 2 <= step < 20 and not (out / "final.pt").exists() and not (out / ".lock").exists()
    line = err.strip()
    prefix = f"fastdino: interrupted at step {step}; resume with: "
    assert line.startswith(prefix), line
    again = shlex.split(line.removeprefix(prefix))
    assert again[:2] == ["fastdino", "pretrain"] and again[2:] == argv[1:]
    with pytest.raises(SystemExit) as e:
        main(again[1:])
    assert e.value.code in (0, None)
    assert ck.load(out / "final.pt")["metrics"]["step"] == 19


def test_skipped_images_are_one_line_each_not_python_warnings(w, tmp_path, capsys):
    """Issue 17 item 22: each unreadable training image is one ``fastdino:`` line (the first
    few), then a count; no Python warning with its source line."""
    data = tmp_path / "data"
    data.mkdir()
    for i, f in enumerate(sorted(w.train.rglob("*.png"))[:4]):
        shutil.copy(f, data / f"ok_{i}.png")
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "empty.png").write_bytes(b"")
    args = _pretrain_into(w, tmp_path / "run", *TINY_RUN, "train.max_steps=2")
    args = [a if not a.startswith("data.train=") else f"data.train={data}" for a in args]
    with pytest.raises(SystemExit) as e:  # 2 steps of 5 images: every file is drawn once
        main(args)
    err = capsys.readouterr().err
    assert e.value.code in (0, None), err
    assert "Warning" not in err and "warnings.warn" not in err, err
    assert sorted(err.splitlines()) == [
        "fastdino: skipped 2 unreadable image file(s) during training",
        f"fastdino: skipping unreadable image {data / 'broken.jpg'}",
        f"fastdino: skipping unreadable image {data / 'empty.png'}",
    ], err


def test_many_skipped_images_name_the_first_few_then_count(capsys):
    from fastdino_cli.train.loop import SKIPPED_FILES_SHOWN, _report_skipped
    from fastdino_cli.train.progress import ProgressReporter

    reporter = ProgressReporter(None, start=0, stop=1, total=1, log_period=1, global_batch=1)
    seen: set[str] = set()
    n = SKIPPED_FILES_SHOWN + 3
    _report_skipped(reporter, [f"bad{i}.jpg" for i in range(n)], seen)
    _report_skipped(reporter, ["bad0.jpg", "bad1.jpg"], seen)  # seen before: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert lines[:-1] == [f"fastdino: skipping unreadable image bad{i}.jpg" for i in range(5)]
    assert lines[-1].startswith("fastdino: more unreadable images are skipped") and len(seen) == n


# --------------------------------------------------------------------------------------------
# hostile files (issue 17 items 7, 11, 12, 18, 19): one line naming the file, key or value,
# and every file in the case's folder keeps its bytes (nothing written, nothing replaced)
# --------------------------------------------------------------------------------------------


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _fastdino_dict(w: World) -> dict:
    return torch.load(w.noprobe, map_location="cpu", weights_only=True)


def _hub_state(pos_embed: torch.Tensor) -> dict:
    """The keys of a DINOv2 hub state dict that describe the architecture (ViT-S/14)."""
    return {
        "cls_token": torch.zeros(1, 1, 384),
        "pos_embed": pos_embed,
        "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14),
    }


def _alias_bomb_config(w, d):
    from tests.test_config import billion_laughs

    bomb = d / "bomb.yaml"
    bomb.write_text(billion_laughs(9, 9))
    args = ["pretrain", "--preset", "demo", "--config", str(bomb), "--out", str(d / "run")]
    return args, [str(bomb), "aliases expand to more than"]


def _alias_bomb_in_an_override(w, d):
    from tests.test_config import billion_laughs

    value = billion_laughs(5, 12).replace("\n", ", ").join("{}")
    return ["presets", "show", "demo", f"crops.mean={value}"], ["override crops.mean", "aliases"]


def _teacher_is_a_list(w, d):
    ckpt = _saved(d / "teacher_list.pt", {**_fastdino_dict(w), "teacher": [torch.zeros(2)]})
    return ["checkpoint", "info", str(ckpt)], [str(ckpt), "'teacher' entry is a list"]


def _teacher_holds_a_string(w, d):
    ckpt = _saved(d / "teacher_str.pt", {**_fastdino_dict(w), "teacher": {"backbone.w": "x"}})
    args = ["checkpoint", "export", str(ckpt), "--out", str(d / "m.safetensors")]
    return args, [str(ckpt), "'teacher' entry holds str at 'backbone.w'"]


def _version_is_a_string(w, d):
    ckpt = _saved(d / "version_str.pt", {**_fastdino_dict(w), "version": "1"})
    return ["checkpoint", "info", str(ckpt)], [str(ckpt), "version '1' (str)", "not written by"]


def _import_1d_pos_embed(w, d):
    src = _saved(d / "flat_pos.pth", _hub_state(torch.zeros(1370 * 384)))
    args = ["checkpoint", "import", str(src), "--arch", "vit_small", "--out", str(d / "o.pt")]
    return args, ["flat_pos.pth", "pos_embed has shape (526080,)", "(1, 1 + grid * grid, dim)"]


def _import_non_square_pos_embed(w, d):
    src = _saved(d / "odd_pos.pth", _hub_state(torch.zeros(1, 1 + 37 * 36, 384)))
    args = ["checkpoint", "import", str(src), "--arch", "vit_small", "--out", str(d / "o.pt")]
    return args, ["odd_pos.pth", "(1, 1333, 384)", "not a square grid"]


def _export_onto_a_folder(w, d):
    folder = d / "exports.safetensors"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    args = ["checkpoint", "export", str(w.noprobe), "--out", str(folder), "--force"]
    return args, [f"--out {folder} is a folder"]


def _export_onto_its_source(w, d):
    ckpt = d / "final.pt"
    shutil.copy(w.noprobe, ckpt)
    args = ["checkpoint", "export", str(ckpt), "--format", "dinov2", "--out", str(ckpt)]
    return [*args, "--force"], [f"--out {ckpt} is the input", "another file"]


def _import_onto_its_source(w, d):
    src = _saved(d / "weights.pt", _hub_state(torch.zeros(1, 1 + 4, 384)))
    args = ["checkpoint", "import", str(src), "--arch", "vit_small", "--out", str(src)]
    return [*args, "--force"], [f"--out {src} is the input"]


HOSTILE_FILE_CASES = [
    ("config-file-with-an-alias-bomb", _alias_bomb_config),
    ("override-with-an-alias-bomb", _alias_bomb_in_an_override),
    ("checkpoint-whose-teacher-is-a-list", _teacher_is_a_list),
    ("checkpoint-whose-teacher-holds-a-string", _teacher_holds_a_string),
    ("checkpoint-whose-version-is-a-string", _version_is_a_string),
    ("import-a-1d-pos-embed", _import_1d_pos_embed),
    ("import-a-pos-embed-that-is-no-grid", _import_non_square_pos_embed),
    ("export-force-onto-a-folder", _export_onto_a_folder),
    ("export-force-onto-its-own-source", _export_onto_its_source),
    ("import-force-onto-its-own-source", _import_onto_its_source),
]


@pytest.mark.parametrize(
    "case", [c[1] for c in HOSTILE_FILE_CASES], ids=[c[0] for c in HOSTILE_FILE_CASES]
)
def test_hostile_files_are_refused_in_one_line_and_left_as_they_were(w, capsys, case, request):
    folder = w.tmp / "hostile" / request.node.callspec.id
    folder.mkdir(parents=True)
    args, culprits = case(w, folder)
    before = tree_hashes(folder)
    refused_in_one_line(args, capsys, culprits)
    assert tree_hashes(folder) == before  # nothing replaced, nothing new (no run, no output)


def _full_disk_under(monkeypatch, folder: Path) -> None:
    """Every file written under ``folder`` from now on hits ENOSPC at its first write."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __iter__(self):
            return iter(self.f)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        if "w" in mode and os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            return Full(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("command", ["corrupt-eval", "gradcam"])
def test_a_rerun_on_a_full_disk_keeps_the_good_results(w, capsys, monkeypatch, command):
    """Outputs are written through the one atomic writer: a full disk leaves the previous
    results.json / CSV / figures exactly as they were (no 0-byte or truncated file, no temp
    file) and says so in one line."""
    out = w.tmp / f"full_{command}"
    args = {
        "corrupt-eval": [
            "corrupt-eval", str(w.ckpt), "--val", str(w.val), "--corruptions", "gaussian_noise",
            "--severities", "1", "--workers", "0", "--out", str(out),
        ],
        "gradcam": [
            "gradcam", str(w.ckpt), "--data", str(w.val), "--per-class", "1", "--out", str(out),
        ],
    }[command]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None), capsys.readouterr().err
    capsys.readouterr()
    before = tree_hashes(out)
    assert len(before) >= 3
    _full_disk_under(monkeypatch, out)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"fastdino: error: disk full writing {out}"), err
    assert "No space left on device" in err and "previous file, if any, is intact" in err
    assert tree_hashes(out) == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# a symlink loop in a data folder (issue 17): each real directory is read once
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def looped(w) -> tuple[Path, dict[str, int]]:
    """The demo train split with a link back to its root inside one class, a link to a folder
    outside (not a cycle: followed) and a linked file; -> (root, images per class)."""
    root = w.tmp / "looped"
    shutil.copytree(w.train, root, symlinks=True)
    first, second = sorted(p.name for p in root.iterdir())[:2]
    (root / first / "loop").symlink_to("..")  # train/<first>/loop -> train/
    (root / first / "deeper").mkdir()
    (root / first / "deeper" / "again").symlink_to("../..")  # a longer cycle
    outside = w.tmp / "outside_images"
    _png(outside / "extra1.png")
    _png(outside / "extra2.png")
    (root / second / "more").symlink_to(outside)
    (root / second / "linked.png").symlink_to(outside / "extra1.png")
    counts = {p.name: len(list(p.glob("*.png"))) for p in root.iterdir()}
    counts[second] += 2  # more/extra1.png, more/extra2.png (linked.png is already counted)
    return root, counts


def test_every_scanner_visits_each_real_directory_once(looped):
    from fastdino_cli.data.images import scan_images
    from fastdino_cli.data.labelled import scan_labelled_folder
    from fastdino_cli.eval.corruption.data import list_labelled_images
    from fastdino_cli.eval.gradcam.inputs import labelled_classes, list_images

    root, counts = looped
    total = sum(counts.values())
    classes = sorted(counts)
    assert len(scan_images(root)) == total
    assert len(list_images([root])) == total
    found = scan_labelled_folder(root)
    assert len(found.paths) == total and found.class_names == classes
    per_class = [found.labels.count(i) for i in range(len(classes))]
    assert per_class == [counts[c] for c in classes]
    for f, label in zip(found.paths, found.labels, strict=True):  # the label of its own folder
        assert Path(f).relative_to(root).parts[0] == classes[label]
    assert {k: len(v) for k, v in labelled_classes(root).items()} == counts
    samples = list_labelled_images(root)  # corrupt-eval: the same reader, any depth
    assert [(s.path, s.class_name) for s in samples] == found.samples()


def test_pretraining_on_a_looped_folder_counts_each_image_once(w, looped, capsys, monkeypatch):
    from fastdino_cli.train import loop

    root, counts = looped
    seen = {}
    real = loop.scan_images

    def recording(path):
        seen["files"] = real(path)
        return seen["files"]

    monkeypatch.setattr(loop, "scan_images", recording)
    with pytest.raises(SystemExit) as e:
        main(_pretrain(w, root, *TINY_RUN, "train.max_steps=1"))
    assert e.value.code in (0, None), capsys.readouterr().err
    assert len(seen["files"]) == sum(counts.values())


def test_pretraining_accepts_unusual_images(w, odd_images, capsys):
    """CMYK, grayscale, 16-bit, palette and 6000x4000 files train without being skipped."""
    data = next(iter(odd_images.values()))[0].parent
    with pytest.raises(SystemExit) as e:
        main(
            _pretrain(
                w,
                data,
                "train.max_steps=1",
                "train.batch_size_per_gpu=5",
                "data.num_workers=0",
                "crops.local_crops_number=1",
                "model.depth=1",
            )
        )
    captured = capsys.readouterr()
    assert e.value.code in (0, None), captured.err[-2000:]
    assert "max_steps: 1/" in captured.out and "skipped" not in captured.err, captured
