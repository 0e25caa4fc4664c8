"""View invariance per augmentation strategy."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fastdino_cli import checkpoint as ck
from fastdino_cli.config import CropsConfig
from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.features import default_recipe
from fastdino_cli.eval.probe.invariance import (
    STRATEGIES,
    measure_invariance,
    view_invariance,
    view_sampler,
)
from tests.probe_helpers import one_thread, tiny_checkpoint  # noqa: F401


@pytest.fixture(scope="module")
def model_and_recipe(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("inv") / "m.pt")
    model, ckpt = ck.load_teacher_backbone(path)
    return model, default_recipe(ckpt)


def test_identical_views_give_one_and_strong_augmentation_less(model_and_recipe, demo_data):
    model, recipe = model_and_recipe
    folder = scan_labelled_folder(demo_data.val)
    images = [folder.load_rgb(i) for i in range(0, len(folder), 5)]
    crops = CropsConfig()
    same = view_invariance(model, images, view_sampler("identity", recipe, crops), num_views=3)
    assert same == pytest.approx(1.0, abs=1e-5)
    torch.manual_seed(0)
    strong = view_invariance(model, images, view_sampler("original", recipe, crops), num_views=3)
    assert strong < 0.99


def test_views_have_the_crop_size_and_shared_shares_colour(model_and_recipe):
    _, recipe = model_and_recipe
    img = Image.effect_noise((50, 40), 60).convert("RGB")
    crops = CropsConfig(color_jitter_prob=1.0, brightness=0.8, global_crops_scale=(0.99, 1.0))
    torch.manual_seed(0)
    for strategy in STRATEGIES:
        views = view_sampler(strategy, recipe, crops)(img, 3)
        assert len(views) == 3 and all(v.shape == (3, 32, 32) for v in views)
    # a flat image: geometry does nothing, so views differ only by their photometric draw
    flat = Image.new("RGB", (40, 40), (120, 90, 60))
    shared = view_sampler("shared", recipe, crops)(flat, 4)
    assert all(torch.allclose(v, shared[0], atol=1e-5) for v in shared)
    original = view_sampler("original", recipe, crops)(flat, 4)
    assert not all(torch.allclose(v, original[0], atol=1e-3) for v in original)


def test_measure_invariance_reports_every_strategy_and_scale(model_and_recipe, demo_data):
    model, recipe = model_and_recipe
    folder = scan_labelled_folder(demo_data.val)
    out = measure_invariance(model, folder, recipe, {}, num_images=8, num_views=2, seed=3)
    assert set(out) == {*STRATEGIES, "different-images"}
    assert all(-1.0 <= v <= 1.0 + 1e-6 for v in out.values())
    again = measure_invariance(model, folder, recipe, {}, num_images=8, num_views=2, seed=3)
    assert again == out  # seeded
    with pytest.raises(ConfigError, match="unknown augmentation strategy 'blur'"):
        view_sampler("blur", recipe, CropsConfig())
