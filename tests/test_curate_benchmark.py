"""``benchmarks/curation.py`` keeps working: its pool builder plants what its truth says, and the
synthetic search-scale run goes through every search stage. Speed is never asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from curate_helpers import single_threaded
from PIL import Image

from benchmarks import curation as bench

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)


def test_pool_builder_plants_near_duplicates_its_truth_names(demo_data, tmp_path):
    truth = bench.build_pool(
        tmp_path / "pool", demo_data, size=32, in_class=2, per_distractor=1, textures=4,
        dup_pool=6, dup_query=3, dup_eval=3,
    )  # fmt: skip
    files = sorted(str(p) for p in (tmp_path / "pool").iterdir())
    assert sorted(truth) == files and len(files) == 20 + 15 + 4 + 12
    assert json.loads((tmp_path / "pool_truth.json").read_text()) == truth
    kinds = [v["dup_of"][0] for v in truth.values() if "dup_of" in v]
    assert sorted(kinds) == ["eval"] * 3 + ["pool"] * 6 + ["query"] * 3
    for path, entry in truth.items():
        if "dup_of" not in entry:
            continue
        kind, source = entry["dup_of"]
        assert kind == "pool" or str(demo_data.root) in source
        with Image.open(path) as a, Image.open(source) as b:
            assert (entry["how"] == "jpeg") == (a.format == "JPEG")
            a_small = np.asarray(a.convert("L").resize((8, 8)), np.float32)
            b_small = np.asarray(b.convert("L").resize((8, 8)), np.float32)
            # a copy: its 8x8 thumbnail follows the original's (colour shifts change the level)
            assert np.corrcoef(a_small.ravel(), b_small.ravel())[0, 1] > 0.5 or a_small.std() < 2
    assert {v["class"] for v in truth.values()} - {None} <= set(demo_data.class_names)


def test_large_pool_run_goes_through_every_search_stage(tmp_path):
    out = bench.large_pool(3000, 16, tmp_path / "large", shard=1000)
    assert out["pool"] == 3000 and out["index"] == "flat"
    # 2% planted near-copies (noise 0.05 in 16 dimensions): about 60 removed
    assert 30 <= out["removed_within_pool"] <= 120
    assert out["clusters"] == round(np.sqrt(3000 - out["removed_within_pool"]))
    assert out["peak_rss_gib"] > 0
