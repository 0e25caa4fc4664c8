"""``checkpoint.TrainState``: the ``train_state`` entry as a dataclass, RNG states as plain data,
and a checkpoint written before ``TrainState`` (and before format 2) still resuming.

The fixture ``tests/fixtures/checkpoint_v1/checkpoint.pt`` was written by fastdino before this
change (commit cc498f7; ``meta.json`` says how): the tiny run of ``tests/test_pretrain.py`` with
one block, stopped after 4 of its 6 steps (mid-way through the second curriculum stage, so the
AdamW moments, loss centres and RNG states all matter for the next steps).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.checkpoint import TrainState, rng_state, set_rng_state
from fastdino_cli.errors import CheckpointError
from fastdino_cli.train.loop import pretrain
from tests.test_pretrain import same_weights, tiny

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rng_state_round_trips_through_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_train_state_round_trips_and_keeps_the_keys_every_version_wrote(tmp_path):
    state = TrainState(
        step=7,
        stage=1,
        optimizer={"state": {}, "param_groups": []},
        loss={"dino_center": torch.zeros(3)},
        rng=rng_state(),
        data_position=7 * 8,
        bad_steps=2,
        world_size=2,
        rng_per_rank=[rng_state(), rng_state()],
    )
    entry = state.state_dict()
    assert list(entry) == [
        "step",
        "stage",
        "optimizer",
        "scaler",
        "loss",
        "rng",
        "data_position",
        "bad_steps",
        "world_size",
        "rng_per_rank",
    ]
    torch.save(entry, tmp_path / "ts.pt")
    back = TrainState.from_state_dict(torch.load(tmp_path / "ts.pt", weights_only=True))
    assert (back.step, back.stage, back.bad_steps, back.world_size) == (7, 1, 2, 2)
    assert torch.equal(back.loss["dino_center"], torch.zeros(3))
    assert back.rng_for(1, 2) is back.rng_per_rank[1]
    assert back.rng_for(0, 4) is back.rng  # another world size: rank 0's states
    # what older writers left out takes its default; what newer ones add is kept
    old = {"step": 3, "optimizer": {}, "loss": {}, "rng": {}, "from_the_future": 1}
    ts = TrainState.from_state_dict(old)
    assert (ts.bad_steps, ts.world_size, ts.rng_per_rank, ts.scaler) == (0, 1, None, None)
    assert ts.state_dict()["from_the_future"] == 1
    with pytest.raises(CheckpointError, match="lacks optimizer, rng"):
        TrainState.from_state_dict({"step": 3, "loss": {}})


def test_the_fixture_is_a_checkpoint_of_the_old_writer():
    ckpt = ckpt_io.load(FIXTURE / "checkpoint.pt")
    entry = ckpt["train_state"]
    state = TrainState.from_state_dict(entry)
    again = state.state_dict()
    assert list(again) == list(entry)  # same keys, same order
    assert again["step"] == 4 and again["stage"] == 1 and again["world_size"] == 1
    assert again["optimizer"] is entry["optimizer"] and again["rng"] is entry["rng"]


V1_SETTINGS = [  # what a version-1 run trained with (CHANGELOG: resuming a version-1 run)
    "dino.head.norm_last_layer=true",
    "ibot.head.norm_last_layer=true",
    "model.interpolate_offset=0.1",
    "model.interpolate_antialias=false",
]


@pytest.mark.slow
def test_a_version_1_checkpoint_resumes_and_its_state_carries_on_bit_for_bit(tmp_path, demo_data):
    """The fixture predates both ``TrainState`` and checkpoint format 2 (the prototype scale g).
    Migrated on load, it resumes; and the state it resumes with is complete: stopping the resumed
    run one step later and resuming again ends bit for bit where the straight resume ends.

    (An uninterrupted run of today's code is no reference any more: format 2 initialises the
    prototype direction differently, so a fresh run starts from other weights.)"""
    meta = json.loads((FIXTURE / "meta.json").read_text())
    extra = [*meta["extra_overrides"], *V1_SETTINGS]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        run.mkdir()
        shutil.copy(FIXTURE / "checkpoint.pt", run / "checkpoint.pt")
    # the stored data.train is the fixture writer's copy of the demo data: same files here
    res = pretrain(tiny(straight, demo_data.train, extra=extra), force_config=True, progress=False)
    assert res.resumed_from == meta["step"] and res.steps_done == 6 and res.stopped == "finished"
    first = pretrain(
        tiny(stopped, demo_data.train, extra=[*extra, "train.max_steps=5"]),
        force_config=True,
        progress=False,
    )
    assert first.resumed_from == meta["step"] and first.steps_done == 5
    again = pretrain(tiny(stopped, demo_data.train, extra=extra), force_config=True, progress=False)
    assert again.resumed_from == 5 and again.stopped == "finished"
    a, b = ckpt_io.load(straight / "final.pt"), ckpt_io.load(stopped / "final.pt")
    assert same_weights(a["teacher"], b["teacher"]) and same_weights(a["student"], b["student"])
    g = [v for k, v in a["teacher"].items() if k.endswith("last_layer.weight_g")]
    assert g and all(torch.equal(x, torch.ones_like(x)) for x in g)  # frozen at 1, as in v1
