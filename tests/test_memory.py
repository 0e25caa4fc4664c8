"""The memory plan (``train/memory.py``): counted activations against a real CPU forward, the
sharding and checkpointing arithmetic, the budget verdict and the ``--plan --gpu-mem`` output."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from typer.testing import CliRunner

from fastdino_cli.cli import app
from fastdino_cli.config import resolve_config
from fastdino_cli.errors import ConfigError
from fastdino_cli.train.build import build_training
from fastdino_cli.train.memory import GIB, HEADROOM, largest_fitting_batch, plan_memory
from tests.test_train_step import _batch, _cfg

pytestmark = pytest.mark.usefixtures("one_thread")


class RealSaved:
    """Bytes of the distinct storages autograd keeps while a real CPU forward runs."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.storages: dict[int, int] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.params:
            self.storages[s.data_ptr()] = s.nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


@pytest.mark.parametrize("ckpt", [False, True])
def test_counted_activations_match_a_real_cpu_step(tmp_path, ckpt):
    """The meta-device count against the storages a real fp32 forward (student, heads, losses)
    keeps on the CPU; within 15 % (the real batch draws its masks, the plan uses their
    expectation)."""
    extra = [
        "model.embed_dim=64",
        "model.depth=4",
        "model.num_heads=4",
        "crops.global_crops_size=32",
        "crops.local_crops_size=16",
        "curriculum.stages=[{name: one, end: 1.0, global_crops_size: 32, local_crops_size: 16}]",
        "train.batch_size_per_gpu=8",
        "model.drop_path_rate=0.0",
        "train.precision=fp32",  # the plan is of a GPU run: auto would count bf16
        f"model.activation_checkpointing={str(ckpt).lower()}",
    ]
    cfg = _cfg(tmp_path, extra)
    stack = build_training(cfg, accelerator=Accelerator(cpu=True))
    batch = _batch(cfg, 0).to(torch.device("cpu"))  # normalised, as in the step
    with RealSaved(stack.core) as real:
        stack.core(batch, teacher_temp=0.04)
    plan = plan_memory(cfg, 1)
    (stage,) = plan.stages
    # what the forward keeps: the plan's activations less the backward's working set (one
    # block for the batch) and, with checkpointing, less the recomputed block as well
    if ckpt:
        kept = (stage.activations_checkpointed_gib - 2 * stage.block_gib) * GIB
    else:
        kept = (stage.activations_gib - stage.block_gib) * GIB
    assert kept == pytest.approx(real.total, rel=0.15), (kept, real.total)


def test_sharding_divides_the_model_state_and_checkpointing_the_activations():
    # 64 images per GPU both times: a global batch of 64 on 1 GPU, the paper's 512 on 8
    one = plan_memory(resolve_config("vitb16-in1k", None, ["train.global_batch=64"]), 1)
    eight = plan_memory(resolve_config("vitb16-in1k"), 8)
    assert one.batch_size_per_gpu == eight.batch_size_per_gpu == 64
    assert eight.sharded and not one.sharded
    for key in ("parameters_gib", "gradients_gib", "adamw_gib"):
        assert getattr(eight, key) == pytest.approx(getattr(one, key) / 8)
    # ViT-B/16 student ~86M backbone + 2 heads: parameters = student + teacher in fp32
    assert 0.75 < one.parameters_gib < 0.9 and one.adamw_gib == pytest.approx(one.parameters_gib)
    for s1, s8 in zip(one.stages, eight.stages, strict=True):
        assert s8.activations_gib == pytest.approx(s1.activations_gib)  # per device
        assert s1.activations_checkpointed_gib < s1.activations_gib / 2
    low, high = one.stages  # the 112 px stage needs far less than the 224 px one
    assert low.activations_gib < high.activations_gib / 3
    fp32 = plan_memory(
        resolve_config("vitb16-in1k", None, ["train.precision=fp32", "train.global_batch=64"]), 1
    )
    assert fp32.stages[1].activations_gib > 1.6 * one.stages[1].activations_gib
    assert fp32.cast_copies_gib == 0 and one.cast_copies_gib > 0


def test_activations_grow_linearly_with_the_batch():
    a = plan_memory(resolve_config("vits16-in100", None, ["train.global_batch=32"]))
    b = plan_memory(resolve_config("vits16-in100", None, ["train.global_batch=64"]))
    for sa, sb in zip(a.stages, b.stages, strict=True):
        calls = 2 * sa.activations_gib - sb.activations_gib  # the per-call head part
        assert 0 < calls < 0.1 * sa.activations_gib


def test_the_budget_verdict_and_the_largest_batch_that_fits():
    cfg = resolve_config("vitb16-in1k", None, ["train.global_batch=2048"])  # 256 per GPU
    tight = plan_memory(cfg, 8, 40)
    assert tight.fits is False and tight.peak_gib > 40 * (1 - HEADROOM)
    n = largest_fitting_batch(cfg, 8, 40)
    assert 0 < n < 256
    ok = resolve_config("vitb16-in1k", None, [f"train.global_batch={8 * n}"])
    assert plan_memory(ok, 8, 40).fits is True
    too_many = resolve_config("vitb16-in1k", None, [f"train.global_batch={8 * (n + 1)}"])
    assert plan_memory(too_many, 8, 40).fits is False


def test_plan_prints_memory_and_the_verdict_for_a_budget():
    runner = CliRunner()
    paper = ["pretrain", "--preset", "vitb16-in1k", "--plan", "--gpus", "8"]
    res = runner.invoke(app, [*paper, "--gpu-mem", "80"])  # 512 images: 64 per GPU
    assert res.exit_code == 0, res.output
    assert "memory per device" in res.output and "fits 80 GiB" in res.output
    res = runner.invoke(app, [*paper, "--gpu-mem", "16"])
    assert "DOES NOT FIT 16 GiB" in res.output and "train.global_batch <=" in res.output
    assert "FSDP2 over 8" in res.output
    res = runner.invoke(app, ["pretrain", "--preset", "demo", "--plan", "--json"])
    data = json.loads(res.output)
    assert data["memory"]["world"] == 1 and len(data["memory"]["stages"]) == 2
    with pytest.raises(ConfigError, match="only apply with --plan"):
        runner.invoke(
            app, ["pretrain", "--preset", "demo", "--gpu-mem", "80"], catch_exceptions=False
        )
