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
