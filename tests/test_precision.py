"""Mixed precision on the CPU: bf16 and fp16 autocast, the fp32 islands, the fp16 grad scaler.

``train.precision`` is honoured on the CPU exactly as on a GPU (``train/precision.py``), so the
dtype handling runs here: a bf16 step against an fp32 step, the dtypes of every op inside the
fp32 islands (recorded at the dispatcher while a whole step runs), the grad scaler's skips and
bit-exact resumes of bf16 and fp16 runs.

Tolerances (measured, tiny ViT with its block weights scaled x30 so that the CLS features of
different images differ by more than bf16's resolution; at the default init they differ by
~1e-4 relative and bf16 rounds them together, which puts KoLeo at its -log(eps) floor):
per loss term bf16 / fp32 differ by at most 0.2 % (DINO), 0.5 % (iBOT), 1.2 % (KoLeo), 0.3 %
(teacher entropy); the tests allow 1 %, 1 %, 3 %, 1 %. Weights after two AdamW steps differ by
at most ~1e-4 (lr ~1e-4; AdamW's update is sign-like); allowed 1e-3.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.model.heads import WeightNormLinear
from fastdino_cli.ssl import losses as ssl_losses
from fastdino_cli.ssl import meta as ssl_meta
from fastdino_cli.train.build import build_training
from fastdino_cli.train.loop import pretrain
from fastdino_cli.train.precision import build_precision, resolve_precision_name
from tests.test_pretrain import losses, tiny
from tests.test_train_step import _batch, _cfg, _changed, _state

pytestmark = pytest.mark.usefixtures("one_thread")

TERMS_RTOL = {"dino_global": 1e-2, "dino_local": 1e-2, "ibot": 1e-2, "koleo": 3e-2}
TERMS_RTOL |= {"teacher_entropy": 1e-2, "loss": 2e-2}


def _stack(tmp_path, precision: str, extra=()):
    cfg = _cfg(tmp_path, [f"train.precision={precision}", *extra])
    return cfg, build_training(cfg, accelerator=Accelerator(cpu=True))


def _spread_features(stack, scale: float = 30.0) -> None:
    """Scale every matrix of both backbones: different images get CLS features bf16 can tell
    apart (see the module docstring)."""
    with torch.no_grad():
        for part in (stack.core.student, stack.core.teacher):
            for name, p in part["backbone"].named_parameters():
                if name.endswith("weight") and p.ndim == 2:
                    p.mul_(scale)


def test_precision_resolves_per_device_and_fp16_gets_a_scaler():
    assert resolve_precision_name("auto", "cpu") == "fp32"
    assert resolve_precision_name("bf16", "cpu") == "bf16"
    cpu = torch.device("cpu")
    assert build_precision("fp16", cpu).scaler is not None
    assert build_precision("bf16", cpu).scaler is None
    with build_precision("bf16", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with build_precision("fp32", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("centering", ["softmax", "sinkhorn_knopp"])
def test_a_bf16_step_matches_the_fp32_step_per_loss_term(tmp_path, centering):
    records, students = {}, {}
    for precision in ("fp32", "bf16"):
        method = [f"train.centering.method={centering}"]
        cfg, stack = _stack(tmp_path / precision, precision, method)
        _spread_features(stack)
        records[precision] = [stack.step(_batch(cfg, s)).resolve() for s in range(2)]
        students[precision] = {k: v.clone() for k, v in stack.core.student.state_dict().items()}
    for a, b in zip(records["fp32"], records["bf16"], strict=True):
        assert a["finite"] and b["finite"] and b["applied"]
        for term, rtol in TERMS_RTOL.items():
            assert b[term] == pytest.approx(a[term], rel=rtol), (a["step"], term, a[term], b[term])
        # the step applied the same schedule
        assert (a["lr"], a["momentum"], a["teacher_temp"]) == (
            b["lr"],
            b["momentum"],
            b["teacher_temp"],
        )
    for k, v in students["fp32"].items():
        assert students["bf16"][k].dtype == torch.float32  # master weights stay fp32
        torch.testing.assert_close(students["bf16"][k], v, rtol=0, atol=1e-3)


class DtypeWatch(TorchDispatchMode):
    """Records the dtype of every floating-point op output, tagged with the island the op ran
    in (None outside the islands)."""

    def __init__(self) -> None:
        super().__init__()
        self.island: str | None = None
        self.seen: list[tuple[str | None, str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.seen.append((self.island, func.overloadpacket.__name__, t.dtype))
        return out

    def wrap(self, name: str, fn):
        def inner(*a, **k):
            before, self.island = self.island, name
            try:
                return fn(*a, **k)
            finally:
                self.island = before

        return inner


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_fp32_islands_stay_fp32_inside_a_step(tmp_path, monkeypatch, precision):
    """KoLeo, the teacher centering, the student cross-entropy and the heads' prototype layer
    compute in fp32 while the rest of the step runs in the autocast dtype."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cfg, stack = _stack(tmp_path, precision)
    watch = DtypeWatch()
    monkeypatch.setattr(ssl_meta, "koleo_loss", watch.wrap("koleo", ssl_losses.koleo_loss))
    monkeypatch.setattr(
        ssl_losses, "cross_entropy", watch.wrap("cross_entropy", ssl_losses.cross_entropy)
    )
    centred = ssl_losses._CenteredCrossEntropy._centered
    monkeypatch.setattr(
        ssl_losses._CenteredCrossEntropy, "_centered", watch.wrap("centering", centred)
    )
    for m in stack.core.modules():
        if isinstance(m, WeightNormLinear):
            m.register_forward_pre_hook(lambda *_: setattr(watch, "island", "prototypes"))
            m.register_forward_hook(lambda *_: setattr(watch, "island", None))
    with watch:
        record = stack.step(_batch(cfg, 0)).resolve()
    assert record["finite"]
    islands = {name for name, _, _ in watch.seen}
    assert {"koleo", "cross_entropy", "centering", "prototypes"} <= islands
    inside = [(i, op, dt) for i, op, dt in watch.seen if i is not None and dt != torch.float32]
    assert inside == []
    # autocast is really on outside them: the backbone's matmuls run in the low precision
    outside = {dt for i, op, dt in watch.seen if i is None and op in ("mm", "addmm", "bmm")}
    assert low in outside
    # the centres and the teacher (updated in place by the EMA) stay fp32
    assert all(v.dtype == torch.float32 for v in stack.core.loss_state_dict().values())
    assert all(p.dtype == torch.float32 for p in stack.core.teacher.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_fp16_a_non_finite_loss_changes_nothing_but_the_loss_scale(tmp_path, fused):
    cfg, stack = _stack(tmp_path, "fp16", [f"optim.fused={str(fused).lower()}"])
    scaler = stack.precision.scaler
    # a scale this tiny model's fp16 gradients fit in (its head's L2 normalisation of ~1e-3
    # vectors multiplies gradients by ~1e3: 64 already overflows; 65536 is the default)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1.0})
    model, opt = stack.core, stack.inner_optimizer
    first = stack.step(_batch(cfg, 0)).resolve()
    assert first["finite"] and first["applied"] and first["loss_scale"] == 1.0
    before = _state(model, opt)
    bad = stack.step(_batch(cfg, 1, nan=True)).resolve()
    assert not bad["finite"] and not bad["applied"] and math.isnan(bad["loss"])
    assert _changed(before, _state(model, opt)) == set()  # weights, EMA, centres, AdamW
    assert scaler.get_scale() == 0.5  # the scaler backs off, as on any inf / nan gradient
    good = stack.step(_batch(cfg, 2)).resolve()
    assert good["finite"] and good["applied"]
    changed = _changed(before, _state(model, opt))
    assert {"l.dino_center", "t.backbone.cls_token", "s.backbone.cls_token"} <= changed


@pytest.mark.parametrize("fused", [True, False])
def test_fp16_an_overflow_skips_the_step_without_counting_it_as_bad(tmp_path, fused):
    """A finite loss whose scaled gradients overflow fp16: the scaler skips the update, and the
    EMA and centres are held with it; the step is ``applied: false`` but ``finite``."""
    cfg, stack = _stack(tmp_path, "fp16", [f"optim.fused={str(fused).lower()}"])
    scaler = stack.precision.scaler
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1.0})
    assert stack.step(_batch(cfg, 0)).resolve()["applied"]  # AdamW's moments exist now
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0**100})
    model, opt = stack.core, stack.inner_optimizer
    before = _state(model, opt)
    record = stack.step(_batch(cfg, 1)).resolve()
    assert record["finite"] and not record["applied"] and math.isfinite(record["loss"])
    assert not math.isfinite(record["grad_norm_backbone"])
    assert _changed(before, _state(model, opt)) == set()
    assert record["loss_scale"] == 2.0**99 == scaler.get_scale()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_resumes_bit_for_bit(tmp_path, demo_data, precision, monkeypatch):
    """4 steps straight against 2 + 2 resumed (AdamW, centres, RNG and, with fp16, the grad
    scaler's scale and growth tracker restored from ``checkpoint.pt``). The fp16 runs start at
    a loss scale of 4 (not 65536): the first steps overflow and back off, later ones apply,
    so a resume that restarted the scale would diverge."""
    from fastdino_cli.train import build

    def low_start(name, device):
        p = build_precision(name, device)
        if p.scaler is not None:
            p.scaler.load_state_dict({**p.scaler.state_dict(), "scale": 4.0})
        return p

    monkeypatch.setattr(build, "build_precision", low_start)
    extra = [f"train.precision={precision}"]
    ref, out = tmp_path / "straight", tmp_path / "resumed"
    pretrain(tiny(ref, demo_data.train, epochs=2, extra=extra), progress=False)
    first = pretrain(
        tiny(out, demo_data.train, epochs=2, extra=[*extra, "train.max_steps=2"]), progress=False
    )
    assert first.steps_done == 2
    state = ckpt_io.load(out / "checkpoint.pt")["train_state"]
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    else:
        assert state["scaler"] is None
    second = pretrain(tiny(out, demo_data.train, epochs=2, extra=extra), progress=False)
    assert second.resumed_from == 2 and second.steps_done == 4
    assert losses(out) == losses(ref)
    rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    applied = [r["applied"] for r in rows]
    if precision == "fp16":
        assert False in applied and True in applied, applied  # both kinds of step were run
        assert all(r["finite"] for r in rows)  # an overflow is not a bad step
    else:
        assert all(applied) and "loss_scale" not in rows[0]
    a, b = ckpt_io.load(ref / "final.pt"), ckpt_io.load(out / "final.pt")
    for part in ("teacher", "student"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
