"""``checkpoint.TrainState``: the ``train_state`` entry as a dataclass, RNG states as plain data,
and a checkpoint written before ``TrainState`` existed still resuming bit for bit.

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


@pytest.mark.slow
def test_a_checkpoint_written_before_train_state_resumes_bit_for_bit(tmp_path, demo_data):
    """Resumed from the old checkpoint, the run ends exactly where an uninterrupted run of
    this code ends: the old ``train_state`` restores everything the next steps depend on."""
    meta = json.loads((FIXTURE / "meta.json").read_text())
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(FIXTURE / "checkpoint.pt", run / "checkpoint.pt")
    extra = meta["extra_overrides"]
    # the stored data.train is the fixture writer's copy of the demo data: same files here
    res = pretrain(tiny(run, demo_data.train, extra=extra), force_config=True, progress=False)
    assert res.resumed_from == meta["step"] and res.steps_done == 6 and res.stopped == "finished"
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if here != (meta["torch"], meta["cpu_capability"]):
        pytest.skip(
            f"bitwise comparison needs the fixture's torch {meta['torch']} on a "
            f"{meta['cpu_capability']} CPU (float kernels differ across them); here {here}"
        )
    ref = tmp_path / "ref"
    pretrain(tiny(ref, demo_data.train, extra=extra), progress=False)
    a, b = ckpt_io.load(ref / "final.pt"), ckpt_io.load(run / "final.pt")
    assert same_weights(a["teacher"], b["teacher"]) and same_weights(a["student"], b["student"])
