"""Tiny checkpoints and synthetic features shared by the probe tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastdino_cli import checkpoint as ck
from fastdino_cli.config import ModelConfig
from fastdino_cli.eval.features import Features
from fastdino_cli.model.vit import build_vit


def tiny_checkpoint(
    path: Path, *, seed: int = 7, img_size: int = 32, depth: int = 4, registers: int = 0
) -> Path:
    """A random-init ViT (width 32, patch 8) saved in the fastdino format: the one tiny
    checkpoint of the evaluation tests (probe, Grad-CAM, ...)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        arch="vit_tiny",
        patch_size=8,
        img_size=img_size,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        num_register_tokens=registers,
        layerscale_init=None,  # DINOv2's 1e-5 makes a random-init CLS ignore the image
    )
    model = build_vit(cfg)
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    ckpt = ck.make_checkpoint(
        config={"model": cfg.model_dump(mode="python")}, arch=model.arch_dict(), teacher=teacher
    )
    return ck.save(ckpt, path)


def synthetic_features(
    n: int, num_classes: int, dim: int = 16, *, separable: bool = True, seed: int = 0
) -> Features:
    """Features whose last-block CLS separates the classes (or carries random labels)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    centers = torch.randn(num_classes, dim, generator=g) * 4
    x = torch.randn(n, dim, generator=g) * 0.5
    if separable:
        x = x + centers[labels]
    else:
        labels = torch.randint(0, num_classes, (n,), generator=g)
    cls = torch.stack([torch.randn(n, dim, generator=g), x], dim=1)  # block -2 is noise
    patch_mean = torch.randn(n, dim, generator=g)
    return Features(cls, patch_mean, labels, [f"c{i}" for i in range(num_classes)])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and do not stall when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
