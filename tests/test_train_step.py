"""The training step: no host-device synchronisation inside it, and an exact skip on the device.

A CPU cannot show a GPU stall, but it can show its cause: every operation that would make the
host wait for a CUDA device goes through the dispatcher as one of a few ATen ops (reading a
scalar, counting a mask, turning Python data into a tensor). ``SyncWatch`` records them while a
full step (forward, losses, backward, clipping, AdamW, EMA, the copy of the scalars) runs.
"""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.curriculum_speed import synthetic_batch
from fastdino_cli.config import resolve_config
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train.build import build_schedules, build_training
from fastdino_cli.train.schedules import Schedules
from fastdino_cli.train.step import TrainStep
from tests.test_pretrain import tiny_overrides

_ALWAYS = {
    "_local_scalar_dense",  # .item(), float(t), bool(t), int(t), .tolist()
    "nonzero",  # t[bool_mask], torch.where(mask) with one argument
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "is_nonzero",
    "equal",
    "lift_fresh",  # torch.tensor(python data): a blocking host-to-device copy on CUDA
}


def _bool_index(args) -> bool:
    def has_bool(x) -> bool:
        if isinstance(x, torch.Tensor):
            return x.dtype in (torch.bool, torch.uint8)
        if isinstance(x, list | tuple):
            return any(has_bool(y) for y in x)
        return False

    return len(args) > 1 and has_bool(args[1])


class SyncWatch(TorchDispatchMode):
    """Records the ATen ops that block the host on a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _ALWAYS:
            self.seen.append(name)
        elif name in ("index", "index_put_", "_index_put_impl_") and _bool_index(args):
            self.seen.append(f"{name} with a bool mask")
        elif name == "repeat_interleave" and isinstance(args[0], torch.Tensor):
            if (kwargs or {}).get("output_size") is None and func._overloadname == "Tensor":
                self.seen.append("repeat_interleave without output_size")
        return func(*args, **(kwargs or {}))


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, extra=()):
    return resolve_config(None, None, tiny_overrides(tmp_path / "run", "demo", extra=list(extra)))


def _trainer(cfg) -> tuple[SSLMetaArch, torch.optim.Optimizer, TrainStep]:
    """The loop's own stack (``train.build``), on the CPU whatever the machine has."""
    stack = build_training(cfg, accelerator=Accelerator(cpu=True))
    return stack.core, stack.inner_optimizer, stack.step


def _schedules(cfg) -> Schedules:
    return build_schedules(cfg, world_size=1)


def _batch(cfg, step: int, nan: bool = False):
    """What the loader yields (uint8 crops with their normalisation, built by the benchmark's
    ``synthetic_batch``); ``nan``: the global crops as floats with a NaN image, for a
    non-finite loss."""
    batch = synthetic_batch(cfg, step, cfg.crops.global_crops_size, cfg.crops.local_crops_size)
    if nan:
        batch.global_crops = batch.global_crops.float()  # float crops pass through unnormalised
        batch.global_crops[0] = float("nan")
    return batch


def _state(model, opt) -> dict[str, torch.Tensor]:
    out = {f"s.{k}": v.clone() for k, v in model.student.state_dict().items()}
    out |= {f"t.{k}": v.clone() for k, v in model.teacher.state_dict().items()}
    out |= {f"l.{k}": v.clone() for k, v in model.loss_state_dict().items()}
    for i, st in enumerate(opt.state.values()):
        out |= {f"o{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()}
    return out


def _changed(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
def test_a_step_with_fused_adamw_never_makes_the_host_wait(tmp_path, centering):
    cfg = _cfg(tmp_path, ["optim.fused=true", f"train.centering.method={centering}"])
    _, _, train_step = _trainer(cfg)
    batches = [_batch(cfg, s) for s in range(2)]
    assert batches[0].n_masked > 0  # the iBOT gather and loss run
    assert batches[0].global_crops.dtype == torch.uint8  # normalised inside the step
    with SyncWatch() as watch:
        pendings = [train_step(b) for b in batches]
    assert watch.seen == []
    record = pendings[-1].resolve()  # the host reads only here, after the step
    assert record["finite"] and not record["stop_requested"]
    assert math.isfinite(record["loss"]) and record["grad_norm_backbone"] > 0


def test_the_watch_sees_host_reads_and_the_non_fused_step_reads_once(tmp_path):
    """The watch is not blind: a bool-mask gather, a scalar read and a tensor from Python data
    are caught, and the non-fused AdamW path (the CPU default) reads its finite flag on the host
    (first; the non-fused AdamW itself reads its step counters afterwards)."""

    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            _ = float(g.sum())
            return g * 2

    x = torch.randn(4, 3, requires_grad=True)
    with SyncWatch() as watch:
        _ = x[x[:, 0] > 0]
        _ = float(x.sum())
        _ = torch.tensor([1, 2])
        ReadsInBackward.apply(x).sum().backward()  # backward runs under the watch too
    assert watch.seen == [
        "index with a bool mask",
        "_local_scalar_dense",
        "lift_fresh",
        "_local_scalar_dense",
    ]
    cfg = _cfg(tmp_path, ["optim.fused=false"])
    _, _, train_step = _trainer(cfg)
    batch = _batch(cfg, 0)
    with SyncWatch() as watch:
        train_step(batch)
    assert watch.seen[0] == "_local_scalar_dense"


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_changes_nothing_and_the_next_step_trains(tmp_path, fused):
    cfg = _cfg(tmp_path, [f"optim.fused={str(fused).lower()}"])
    model, opt, train_step = _trainer(cfg)
    assert train_step.skips_on_device is fused
    assert train_step(_batch(cfg, 0)).resolve()["finite"]
    before = _state(model, opt)
    bad = train_step(_batch(cfg, 1, nan=True)).resolve()
    assert not bad["finite"] and math.isnan(bad["loss"])
    assert _changed(before, _state(model, opt)) == set()  # weights, EMA, centres, AdamW
    good = train_step(_batch(cfg, 2)).resolve()
    assert good["finite"]
    changed = _changed(before, _state(model, opt))
    assert {"l.dino_center", "t.backbone.cls_token", "s.backbone.cls_token"} <= changed
    assert any(k.startswith("o") and k.endswith(".step") for k in changed)


def test_fused_and_non_fused_steps_agree(tmp_path):
    records, weights = [], []
    for fused in (True, False):
        cfg = _cfg(tmp_path, [f"optim.fused={str(fused).lower()}"])
        model, _, train_step = _trainer(cfg)
        records.append([train_step(_batch(cfg, s)).resolve() for s in range(3)])
        weights.append(model.teacher.state_dict())
    for a, b in zip(*records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-4, atol=1e-6)


def test_a_stop_request_travels_with_the_step(tmp_path):
    cfg = _cfg(tmp_path, ["optim.fused=true"])
    _, _, train_step = _trainer(cfg)
    assert train_step(_batch(cfg, 0), stop_requested=True).resolve()["stop_requested"]
    assert not train_step(_batch(cfg, 1)).resolve()["stop_requested"]


def test_scalars_travel_in_one_vector_and_resolve_to_plain_values():
    from fastdino_cli.train.step import _FINITE, _GO, _WEIGHTS, to_host_async

    values = _schedules(resolve_config(None, None, tiny_overrides("/tmp/x", "demo"))).at(0)
    scalars = {"loss": torch.tensor(1.5), "n": torch.tensor([2.0])}
    scalars |= {_FINITE: torch.tensor(0.0), _GO: torch.tensor(1.0), _WEIGHTS: torch.tensor(1.0)}
    pending = to_host_async(scalars, 7, values)
    pending.info = {"stage": 1}
    assert pending.keys == ["loss", "n", _FINITE, _GO, _WEIGHTS] and pending.host.shape == (5,)
    record = pending.resolve()
    assert record["step"] == 7 and record["stage"] == 1 and record["lr"] == values.lr
    assert record["loss"] == 1.5 and record["n"] == 2.0
    assert record["finite"] is False and record["stop_requested"] is False
    assert record["weights_finite"] is True
    assert _GO not in record and _WEIGHTS not in record
