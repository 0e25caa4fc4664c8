"""A distillation run in two CPU processes (gloo, FSDP2: the frozen teacher sharded too)
matches the same run in one process on the same global batch, to float32 rounding (the
tolerance of ``tests/test_distributed.py``, whose helpers and worker this reuses)."""

from __future__ import annotations

import pytest

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import resolve_config
from fastdino_cli.train.loop import pretrain
from tests.test_distributed import (
    GLOBAL_BATCH,
    METRIC_KEYS,
    TOL,
    _max_diff,
    _rows,
    overrides,
    two_workers,
)

STUDENT = ["model.embed_dim=16", "model.depth=1", "model.patch_size=4"]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_distillation_matches_one_process(tmp_path, demo_data):
    data = demo_data.train
    teacher_dir = tmp_path / "teacher"
    pretrain(
        resolve_config(None, None, overrides(teacher_dir, data, 4, ["train.max_steps=2"])),
        progress=False,
    )
    distill = [*STUDENT, f"distill.teacher={teacher_dir / 'final.pt'}"]
    two, one = tmp_path / "two", tmp_path / "one"
    jobs = [{"overrides": overrides(two, data, GLOBAL_BATCH // 2, distill)}]
    with two_workers(tmp_path, jobs) as proc:
        pretrain(resolve_config(None, None, overrides(one, data, GLOBAL_BATCH, distill)),
                 progress=False)  # fmt: skip
        rc = proc.wait(timeout=300)
    assert rc == 0, (tmp_path / "torchrun.log").read_text()[-4000:]
    a, b = _rows(one), _rows(two)
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(4))
    for x, y in zip(a, b, strict=True):
        for k in METRIC_KEYS:
            assert abs(x[k] - y[k]) <= TOL * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
    r, s = ckpt_io.load(one / "final.pt"), ckpt_io.load(two / "final.pt")
    assert r["arch"]["patch_size"] == 4
    assert _max_diff(r["teacher"], s["teacher"]) < TOL
    assert _max_diff(r["student"], s["student"]) < TOL
