"""THE image reader (``data/images.py``, ``data/labelled.py``): one folder gives pretraining and
every evaluation the same files, labels and pixels; one pixel limit; the bad-file policy."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from fastdino_cli.config import CropsConfig, CurriculumConfig, resolve_config
from fastdino_cli.data.images import (
    MAX_PIXELS,
    UnreadableImage,
    first_readable,
    load_rgb,
    scan_images,
    walk_image_files,
)
from fastdino_cli.data.jpeg_scale import DecodeSpec
from fastdino_cli.data.labelled import (
    LabelledFolder,
    check_same_classes,
    resolve_layout,
    scan_labelled_folder,
)
from fastdino_cli.data.multicrop import MultiCropDataset
from fastdino_cli.errors import DataError


def _png(path: Path, colour=(200, 30, 60), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def _folder(root: Path, classes, n=2, size=20) -> Path:
    for c in classes:
        for i in range(n):
            _png(root / c / f"{i}.png", (i * 40, 10, 200), (size, size))
    return root


def _bomb(path: Path, side: int = 50_000) -> Path:
    """A valid 1x1 PNG whose IHDR claims ``side`` x ``side`` pixels (2.5 gigapixels for 50000):
    a few dozen bytes on disk, 7.5 GB if anything tried to decode it."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# one folder, the same (file, class) list for every subcommand
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def mixed_val(tmp_path) -> tuple[Path, list[tuple[str, str]]]:
    """A ``--val`` folder with every case the readers used to disagree on; -> (root, the
    expected (path relative to root, class) list, in the readers' order)."""
    root = tmp_path / "val_root"
    _png(root / "cat" / "a.png")
    (root / "cat" / "sub" / "deep").mkdir(parents=True)
    Image.new("RGB", (12, 10), (1, 2, 3)).save(root / "cat" / "sub" / "deep" / "B.JPG", "JPEG")
    Image.new("L", (12, 10), 90).save(root / "cat" / "c.pgm")  # not read by corrupt-eval before
    _png(root / "cat" / ".hidden.png")  # hidden file
    _png(root / "cat" / ".cache" / "h.png")  # hidden folder
    (root / "cat" / "notes.txt").write_text("not an image")
    _png(root / "dog" / "d.png")
    outside = tmp_path / "elsewhere" / "extra"
    _png(outside / "e.png")
    _png(outside / "f.PNG")
    (root / "dog" / "linked").symlink_to(outside)  # a symlinked sub-folder: followed
    (root / "dog" / "alias").symlink_to(root / "cat" / "sub")  # into another class: not followed
    (root / "dog" / "loop").symlink_to("..")  # a cycle
    _png(root / "val" / "v.png")  # a class named val (no labels.txt: not FastDINOv2's layout)
    _png(root / ".trash" / "t.png")  # a hidden class folder
    expected = [
        ("cat/a.png", "cat"),
        ("cat/c.pgm", "cat"),
        ("cat/sub/deep/B.JPG", "cat"),
        ("dog/d.png", "dog"),
        ("dog/linked/e.png", "dog"),
        ("dog/linked/f.PNG", "dog"),
        ("val/v.png", "val"),
    ]
    return root, expected


def test_one_val_folder_gives_every_subcommand_the_same_images(mixed_val):
    """probe, corrupt-eval --val, fourier-heatmap --data and gradcam --images / --data read the
    same (file, class) list through the readers their library entry points call."""
    from fastdino_cli.eval.corruption.data import list_labelled_images
    from fastdino_cli.eval.features import FeatureRecipe
    from fastdino_cli.eval.fourier.run import load_eval_images
    from fastdino_cli.eval.gradcam.inputs import list_images, sample_per_class

    root, expected = mixed_val

    def rel(pairs):
        return [(os.path.relpath(p, root), c) for p, c in pairs]

    probe = scan_labelled_folder(root, what="val")  # eval.probe.run.run_probe
    assert rel(probe.samples()) == expected
    assert probe.class_names == ["cat", "dog", "val"]

    corrupt = list_labelled_images(root)  # eval.corruption.run.evaluate_classifiers(val=...)
    assert rel((s.path, s.class_name) for s in corrupt) == expected

    classes = ["cat", "dog", "val"]  # the probe head's classes
    recipe = FeatureRecipe(resize_size=8, crop_size=8)
    images, labels, paths, _ = load_eval_images(  # eval.fourier.run.run_fourier_heatmaps
        root, classes, recipe, images_per_class=None, max_images=None, seed=0
    )
    assert list(zip(paths, [classes[i] for i in labels.tolist()], strict=True)) == expected
    assert images.shape == (len(expected), 3, 8, 8)  # every file decodes, the .pgm too

    gradcam = list_images([root])  # eval.gradcam.run.run_gradcam(images=[DIR])
    assert [os.path.relpath(s.path, root) for s in gradcam] == [f for f, _ in expected]
    by_class = sample_per_class(root, per_class=100)  # run_gradcam(data=DIR)
    assert rel((s.path, s.true_class) for s in by_class) == expected

    pretrain = scan_images(root)  # pretraining reads the same files (without labels)
    assert [os.path.relpath(p, root) for p in pretrain] == [f for f, _ in expected]


def test_imagenet_c_splits_are_labelled_folders(tmp_path):
    """Released and FastDINOv2 layouts; sub-folders are read (the released sets have none); the
    ``val/`` level is unwrapped only beside a ``labels.txt``, a class named val stays a class."""
    from fastdino_cli.eval.corruption.data import find_imagenet_c

    root = tmp_path / "imagenet-c"
    _folder(root / "fog" / "1", ["n01", "val"], n=1)
    _png(root / "fog" / "1" / "n01" / "nested" / "x.png")
    _folder(root / "fog" / "2" / "val", ["n01", "n02"], n=2)
    (root / "fog" / "2" / "labels.txt").write_text("n01,tench\nn02,goldfish\n")
    sets, labels = find_imagenet_c(root, ["fog"], [1, 2])
    one = [(s.path.relative_to(root / "fog" / "1").as_posix(), s.class_name) for s in sets[_t(1)]]
    assert one == [("n01/0.png", "n01"), ("n01/nested/x.png", "n01"), ("val/0.png", "val")]
    two = sets[_t(2)]
    assert [s.class_name for s in two] == ["n01", "n01", "n02", "n02"]
    assert all(s.path.is_relative_to(root / "fog" / "2" / "val") for s in two)
    assert labels == {"n01": "tench", "n02": "goldfish"}
    capped, _ = find_imagenet_c(root, ["fog"], [2], max_per_class=1)
    assert [s.path.name for s in capped[_t(2)]] == ["0.png", "0.png"]


def _t(severity: int):
    from fastdino_cli.eval.corruption.data import Task

    return Task("fog", severity)


def test_links_into_the_tree_give_the_real_path_and_the_real_class(tmp_path):
    """A link from one class into another class's sub-folder (listed before it, alphabetically)
    adds nothing: the images keep their real path and class, labelled or not."""
    root = tmp_path / "data"
    _png(root / "b_class" / "sub" / "x.png")
    _png(root / "a_class" / "own.png")
    (root / "a_class" / "0_link").symlink_to(root / "b_class" / "sub")
    folder = scan_labelled_folder(root)
    assert [(p.relative_to(root).as_posix(), c) for p, c in folder.samples()] == [
        ("a_class/own.png", "a_class"),
        ("b_class/sub/x.png", "b_class"),
    ]
    assert scan_images(root) == [p for p, _ in folder.samples()]
    assert walk_image_files(root / "a_class") == [  # walked alone, the link leads outside
        root / "a_class" / "0_link" / "x.png",
        root / "a_class" / "own.png",
    ]


# --------------------------------------------------------------------------------------------
# labelled layouts and their one-line errors (moved from test_features / test_multicrop)
# --------------------------------------------------------------------------------------------


def test_labelled_folder_layout(demo_data):
    lab = scan_labelled_folder(demo_data.train)
    assert lab.class_names == sorted(demo_data.class_names)
    assert len(lab.paths) == demo_data.num_train and len(set(lab.labels)) == 10
    assert list(lab.by_class()) == lab.class_names
    assert [len(v) for v in lab.first_per_class(3).by_class().values()] == [3] * 10


def test_layouts_imagenet_c_split_and_fastdinov2_val(tmp_path):
    split = _folder(tmp_path / "imagenet-c" / "gaussian_noise" / "3", ["n01", "n02"])
    f = scan_labelled_folder(split)
    assert f.class_names == ["n01", "n02"] and f.labels == [0, 0, 1, 1]
    assert f.labels_txt is None
    mini = tmp_path / "mini" / "fog" / "1"
    _folder(mini / "val", ["n01", "n02"], n=1)
    (mini / "labels.txt").write_text("n01\nn02\n")
    g = scan_labelled_folder(mini)
    assert g.root == mini / "val" and len(g) == 2 and g.labels_txt == mini / "labels.txt"
    assert resolve_layout(mini) == mini / "val"
    (mini / "labels.txt").unlink()  # without labels.txt, val/ is a class like any other
    assert resolve_layout(mini) == mini
    assert scan_labelled_folder(mini, min_classes=1).class_names == ["val"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: _folder(r, ["only"]), r"has a single class \('only'\)"),
        (lambda r: r.mkdir(), r"holds no images in class sub-folders"),
        (lambda r: _png(r / "loose.png"), r"images lie directly in it"),
        (lambda r: (_folder(r, ["a"]), (r / "b").mkdir()), r"class folders without images \(b\)"),
        (lambda r: None, r"does not exist"),
        (lambda r: _png(r), r"is not a folder"),
    ],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=message) as e:
        scan_labelled_folder(root, what="train")
    assert "\n" not in str(e.value) and str(root) in str(e.value)


def test_a_single_class_is_fine_where_the_caller_says_so(tmp_path):
    from fastdino_cli.eval.corruption.data import list_labelled_images
    from fastdino_cli.eval.gradcam.inputs import labelled_classes

    root = _folder(tmp_path / "one", ["only"])
    assert len(scan_labelled_folder(root, min_classes=1)) == 2
    assert [s.class_name for s in list_labelled_images(root)] == ["only", "only"]
    assert list(labelled_classes(root)) == ["only"]


def test_mismatched_classes(tmp_path):
    train = scan_labelled_folder(_folder(tmp_path / "tr", ["a", "b"]))
    val = scan_labelled_folder(_folder(tmp_path / "va", ["a", "c"]))
    with pytest.raises(DataError, match=r"classes differ .*only in val: c; only in train: b"):
        check_same_classes(train, val)


def test_unlabelled_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        scan_images(tmp_path / "empty")
    with pytest.raises(DataError, match="is neither a folder of images nor a .txt list"):
        scan_images(_png(tmp_path / "a.png"))


# --------------------------------------------------------------------------------------------
# decoding: modes, one pixel limit, the bad-file policy
# --------------------------------------------------------------------------------------------


def test_odd_image_modes_become_rgb(tmp_path):
    Image.new("CMYK", (10, 8), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (10, 8), 77).save(tmp_path / "gray.png")
    Image.fromarray(np.full((8, 10), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("RGBA", (10, 8), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (10, 8), 3).save(tmp_path / "pal.gif")
    Image.new("1", (10, 8), 1).save(tmp_path / "bits.pbm")
    for f in sorted(tmp_path.iterdir()):
        img = load_rgb(f)
        assert img.mode == "RGB" and img.size == (10, 8), f
    assert np.asarray(load_rgb(tmp_path / "deep.png")).max() == 255
    assert np.asarray(load_rgb(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    assert np.asarray(load_rgb(tmp_path / "bits.pbm"))[0, 0].tolist() == [255, 255, 255]
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(UnreadableImage, match="x.png"):
        load_rgb(tmp_path / "x.png")


@pytest.fixture()
def no_decode(monkeypatch):
    """Any attempt to decode pixels fails the test: the limit must act on the header alone."""

    def refuse(self):
        raise AssertionError(f"decoded {self.size} pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_pils_guard_is_restored_after_concurrent_reads(tmp_path):
    files = [_png(tmp_path / f"{i}.png") for i in range(16)]
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda f: load_rgb(f).size, files * 8))
    assert sizes == [(12, 10)] * 128 and before == Image.MAX_IMAGE_PIXELS


def test_training_skips_and_counts_a_bomb(tmp_path):
    """Issue 17 item 8: a 2.5-gigapixel PNG header in a training folder was a MemoryError."""
    root = tmp_path / "train"
    good = [_png(root / f"ok_{i}.png", (i * 50, 0, 0), (24, 24)) for i in range(3)]
    bomb = _bomb(root / "a_bomb.png")
    files = scan_images(root)
    assert files[0] == bomb and first_readable(files) == 1
    ds = MultiCropDataset(
        files,
        CropsConfig(local_crops_number=1, global_crops_size=16, local_crops_size=8),
        CurriculumConfig(),
        total_steps=1,
        seed=0,
    )
    sample = ds[(0, 0)]
    assert sample.skipped_files == [str(bomb)] and sample.global_crops[0].shape == (3, 16, 16)
    assert all(ds[(i + 1, 0)].skipped_files == [] for i in range(len(good)))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_a_training_run_skips_and_counts_a_bomb(tmp_path, capsys):
    from fastdino_cli.train.loop import pretrain

    data = tmp_path / "train"
    for i in range(5):
        _png(data / f"ok_{i}.png", (i * 50, 80, 0), (64, 64))
    bomb = _bomb(data / "bomb.png")
    overrides = [
        f"data.train={data}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=1",
        "train.batch_size_per_gpu=5",
        "data.num_workers=0",
        "crops.local_crops_number=1",
        "model.depth=1",
    ]
    res = pretrain(resolve_config("demo", None, overrides), progress=False)
    assert res.skipped_files == [str(bomb)]
    assert "skipped 1 unreadable image file" in capsys.readouterr().err


STAGE1 = DecodeSpec(crops=((112, 1.0), (48, 0.32)))
EVALUATIONS = ("probe/fourier", "features", "corrupt-eval", "gradcam")


def _readers():
    """Every way a file becomes pixels in fastdino: name -> (path -> HxWx3 uint8 array)."""
    from fastdino_cli.eval.corruption.data import FileSet, tensor_to_uint8
    from fastdino_cli.eval.features import ImageDataset, raise_decode_errors
    from fastdino_cli.eval.gradcam.inputs import read_image

    def features(path):  # feature extraction: errors travel back from the workers as text
        ds = ImageDataset(LabelledFolder(path.parent, ["c"], [path], [0]), np.asarray, 1)
        pixels, _, error = ds[0]
        raise_decode_errors([error])
        return pixels

    return {
        "pretrain": load_rgb,
        "pretrain-stage-1": lambda p: load_rgb(p, STAGE1),  # reduced-scale JPEG decode
        "probe/fourier": lambda p: LabelledFolder(p.parent, ["c"], [p], [0]).load_rgb(0),
        "features": features,
        "corrupt-eval": lambda p: tensor_to_uint8(FileSet([(p, 0, 0)], np.asarray)[0][0]),
        "gradcam": read_image,
    }


@pytest.mark.parametrize("reader", list(_readers()))
@pytest.mark.parametrize("kind", ["cmyk", "gray", "16bit", "palette", "huge"])
def test_unusual_images_decode_to_rgb(odd_images, reader, kind, monkeypatch):
    path, rgb = odd_images[kind]
    # a guard far below 6000x4000: the readers must lift PIL's decompression-bomb check
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a DecompressionBombWarning
        arr = np.asarray(_readers()[reader](path))
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    centre = arr[arr.shape[0] // 2, arr.shape[1] // 2].astype(int)
    assert np.abs(centre - np.array(rgb)).max() <= 2, (kind, centre, rgb)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000  # the user's setting is put back


@pytest.mark.parametrize("reader", list(_readers()))
@pytest.mark.parametrize("pil_guard", [None, Image.MAX_IMAGE_PIXELS])
def test_a_bomb_is_refused_from_its_header_by_every_reader(
    tmp_path, no_decode, reader, pil_guard, monkeypatch
):
    """Issue 17 item 8: one limit, checked before a pixel is decoded (``no_decode``), whatever
    PIL's own guard is set to; pretraining gets ``UnreadableImage`` (skip and count), the
    evaluations a one-line ``DataError``."""
    bomb = _bomb(tmp_path / "c" / "bomb.png")
    assert bomb.stat().st_size < 100 and MAX_PIXELS < 50_000**2
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_guard)
    expected = DataError if reader in EVALUATIONS else UnreadableImage
    with pytest.raises(expected, match="decompression bomb") as e:
        _readers()[reader](bomb)
    assert str(bomb) in str(e.value) and "50000x50000" in str(e.value)
    assert "\n" not in str(e.value) and pil_guard == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("reader", EVALUATIONS)
@pytest.mark.parametrize("bad", ["truncated", "text"])
def test_evaluations_name_a_bad_file_in_one_line(tmp_path, reader, bad):
    path = tmp_path / "c" / "bad.jpg"
    path.parent.mkdir()
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, "JPEG")
    path.write_bytes(good.getvalue()[:200] if bad == "truncated" else b"not an image")
    with pytest.raises(DataError) as e:
        _readers()[reader](path)
    msg = str(e.value)
    assert msg.startswith(f"cannot read image {path}: ") and "\n" not in msg, msg
    assert msg.count(str(path)) == 1 and msg.endswith("remove or replace the file")


def test_a_decoder_memory_error_is_an_unreadable_image(tmp_path, monkeypatch):
    path = _png(tmp_path / "x.png")

    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(UnreadableImage, match="not enough memory"):
        load_rgb(path)


def test_image_tensor_round_trip_of_a_pgm(tmp_path):
    """A grayscale PGM reads as three equal channels (it was invisible to corrupt-eval)."""
    arr = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(arr).save(tmp_path / "g.pgm")
    rgb = torch.from_numpy(np.asarray(load_rgb(tmp_path / "g.pgm")).copy())
    assert rgb.shape == (10, 12, 3)
    assert all(torch.equal(rgb[..., k], torch.from_numpy(arr)) for k in range(3))
