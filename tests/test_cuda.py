"""CUDA only (skipped elsewhere): the real training step on a GPU never synchronises the host.

``torch.cuda.set_sync_debug_mode("error")`` makes every synchronising CUDA call raise (a scalar
read, a mask count, a copy from pageable memory, ``cudaStreamSynchronize``), so a step that
completes under it queued all of its work without waiting. The CPU-side twin of this check,
which runs in CI, is ``tests/test_train_step.py``. ``benchmarks/gpu_suite.sh`` runs this file.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastdino_cli.train.build import build_training
from fastdino_cli.train.step import TrainStep
from tests.test_train_step import _batch, _cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_step(cfg) -> TrainStep:
    """The loop's own stack (``train.build``): bf16 autocast where supported, fused AdamW
    (``optim.fused``'s CUDA default)."""
    stack = build_training(cfg)
    assert stack.accelerator.device.type == "cuda"
    return stack.step


@pytest.mark.parametrize("attention", ["sdpa", "auto"])
def test_a_cuda_step_never_synchronises(tmp_path, attention):
    cfg = _cfg(tmp_path, [f"model.attention={attention}", "model.drop_path_rate=0.1"])
    step = _cuda_step(cfg)
    assert step.skips_on_device
    # the loader pins its batches; the first step picks the attention backend (a probe)
    batches = [_batch(cfg, s).pin_memory() for s in range(4)]
    step(batches[0]).resolve()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = [step(b) for b in batches[1:3]]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    records = [p.resolve() for p in pending]
    assert all(r["finite"] and math.isfinite(r["loss"]) for r in records)
    bad = _batch(cfg, 3, nan=True).pin_memory()
    torch.cuda.set_sync_debug_mode("error")
    try:
        skipped = step(bad)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not skipped.resolve()["finite"]
