from __future__ import annotations

import numpy as np
from PIL import Image

from fastdino_cli.data.demo import SOURCES, build_demo_dataset


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_layout_and_credits(demo_data):
    root = demo_data.root
    assert demo_data.num_classes == len(SOURCES) >= 8
    for split, n in (("train", 8), ("val", 4)):
        classes = sorted(p.name for p in (root / split).iterdir())
        assert classes == sorted(demo_data.class_names)
        for c in classes:
            files = list((root / split / c).glob("*.png"))
            assert len(files) == n
    img = Image.open(next((root / "train").rglob("*.png")))
    assert img.size == (32, 32) and img.mode == "RGB"
    assert "CC0" in (root / "CREDITS.txt").read_text()


def test_deterministic_and_cached(tmp_path):
    a = build_demo_dataset(tmp_path / "a", size=24, train_per_class=3, val_per_class=2, seed=3)
    b = build_demo_dataset(tmp_path / "b", size=24, train_per_class=3, val_per_class=2, seed=3)
    assert not a.reused and _files(a.root) == _files(b.root)
    for rel in _files(a.root):
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes()
    again = build_demo_dataset(tmp_path / "a", size=24, train_per_class=3, val_per_class=2, seed=3)
    assert again.reused
    other = build_demo_dataset(tmp_path / "c", size=24, train_per_class=3, val_per_class=2, seed=4)
    f = _files(a.root)[0]
    assert (a.root / f).read_bytes() != (other.root / f).read_bytes()


def test_colour_statistics_do_not_solve_it(tmp_path):
    """kNN on per-channel mean/std (the shortcut) must stay far from the ~97% of plain crops."""
    info = build_demo_dataset(tmp_path / "d", size=32, train_per_class=24, val_per_class=10)

    def feats(split):
        xs, ys = [], []
        for ci, c in enumerate(info.class_names):
            for f in sorted((info.root / split / c).glob("*.png")):
                a = np.asarray(Image.open(f), dtype=np.float32) / 255
                xs.append(np.concatenate([a.mean((0, 1)), a.std((0, 1))]))
                ys.append(ci)
        return np.array(xs), np.array(ys)

    xt, yt = feats("train")
    xv, yv = feats("val")
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    d = ((xv[:, None] - xt[None]) ** 2).sum(-1)
    nn = np.argsort(d, 1)[:, :10]
    pred = np.array([np.bincount(yt[r], minlength=len(info.class_names)).argmax() for r in nn])
    acc = (pred == yv).mean()
    assert acc < 0.6, acc
    assert acc > 1.0 / len(info.class_names)  # but the images do carry information


def test_only_a_folder_fastdino_built_is_ever_replaced(tmp_path):
    """Issue 17: the build replaces train/ and val/, so it only ever does it in a folder that
    holds its marker (or an older build's .complete stamp); a user's folder is refused."""
    import json
    import os

    import pytest

    from fastdino_cli.data.demo import COMPLETE, MARKER
    from fastdino_cli.errors import DataError

    small = dict(size=16, train_per_class=1, val_per_class=1)
    built = build_demo_dataset(tmp_path / "built", **small)
    marker = json.loads((built.root / MARKER).read_text())
    assert marker["built_by"] == "fastdino data demo" and marker["version"] >= 1
    assert oct(os.stat(built.root / MARKER).st_mode & 0o777) == oct(0o666 & ~_umask())
    # another size: the folder is ours, so it is rebuilt in place
    rebuilt = build_demo_dataset(tmp_path / "built", size=16, train_per_class=2, val_per_class=1)
    assert not rebuilt.reused and len(list((built.root / "train" / "cat").glob("*.png"))) == 2
    # interrupted after the marker, before .complete: rebuilt too
    (built.root / COMPLETE).unlink()
    assert not build_demo_dataset(tmp_path / "built", **small).reused
    # a folder built before the marker existed (only .complete): still ours
    (built.root / MARKER).unlink()
    assert build_demo_dataset(tmp_path / "built", size=16, train_per_class=3, val_per_class=1)
    # the user's own train/ and val/: refused, untouched
    user = tmp_path / "user"
    for split in ("train", "val"):
        (user / split / "mine").mkdir(parents=True)
        (user / split / "mine" / "a.png").write_bytes(b"my photo")
    with pytest.raises(DataError, match=f"{user} is not empty .*not built by fastdino"):
        build_demo_dataset(user, **small)
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == [
        "train", "train/mine", "train/mine/a.png", "val", "val/mine", "val/mine/a.png"
    ]  # fmt: skip
    # a stray .complete that is not our stamp does not make a folder ours
    (user / COMPLETE).write_text("done\n")
    with pytest.raises(DataError, match="not built by fastdino"):
        build_demo_dataset(user, **small)
    # new or empty folders are fine
    (tmp_path / "empty").mkdir()
    assert build_demo_dataset(tmp_path / "empty", **small).num_train == len(SOURCES)


def _umask() -> int:
    from fastdino_cli.fileio import process_umask

    return process_umask()
