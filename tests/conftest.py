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
