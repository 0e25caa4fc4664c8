"""Shared fixtures: a small demo dataset built once per session, CPU-only torch settings."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FASTDINO_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small labelled demo folder (10 classes, 8 train / 4 val per class, 32 px)."""
    from fastdino_cli.data.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    return build_demo_dataset(root, size=32, train_per_class=8, val_per_class=4, seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = usefixtures``): they gain
    nothing from two, and on a busy machine every tiny op would pay a thread-pool
    synchronisation. Subprocess tests pass ``OMP_NUM_THREADS=1`` too, so that every process
    reduces in the same order and their numbers match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory):
    """Unusual but valid images every reader must convert, not reject (``test_images.py``,
    ``test_cli_errors.py``): name -> (file, the RGB value its pixels must decode to)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("odd") / "c"
    root.mkdir()
    out = {}
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=100)
    out["cmyk"] = (root / "cmyk.jpg", (255, 0, 0))
    Image.new("L", (40, 30), 100).save(root / "gray.png")
    out["gray"] = (root / "gray.png", (100, 100, 100))
    Image.fromarray(np.full((30, 40), 30000, dtype=np.uint16)).save(root / "g16.png")
    v = round(30000 / 65535 * 255)
    out["16bit"] = (root / "g16.png", (v, v, v))
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    pal.save(root / "pal.png", transparency=1)
    out["palette"] = (root / "pal.png", (0, 0, 255))
    Image.new("RGB", (6000, 4000), (30, 60, 90)).save(root / "huge.jpg", quality=95)
    out["huge"] = (root / "huge.jpg", (30, 60, 90))
    return out
