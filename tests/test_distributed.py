"""Two CPU processes (gloo, FSDP2 sharding on) against one process on the same global batch.

One ``torchrun --nproc_per_node 2`` launch (``tests/_distributed_worker.py``) trains a tiny ViT
(dim 32, depth 2, 4 steps, two curriculum stages with a restart at step 2) uninterrupted (A),
then resumes a copy of A's step-2 checkpoint (B), then runs 3 steps with a NaN loss on rank 1
at step 1 (C), and C again with fused AdamW (F: the skip decided on the device), then A with
FSDP2 mixed precision (A16: ``param_dtype=bf16, reduce_dtype=fp32`` under bf16 autocast) and a
resume of it (B16). Meanwhile this process trains the single-process references (R, and R16 in
bf16 autocast) with the same global batch of 8 (8 per process here, 4 per process there).

Tolerances: sharded and unsharded runs sum the gradients in a different order, so they agree to
float32 rounding, not bit for bit. Measured on CPU: losses within 2.4e-7, teacher weights within
4e-9, student weights within 3e-8. The tests allow 1e-6 (losses relative, weights absolute), far
below the 6.4e-4 drift of a stale (not resharded) teacher. Resuming the sharded run is compared
bit for bit, and a 2-process checkpoint resumes in one process. KoLeo is computed on each
process's own batch (as in the reference), so it is switched off for the comparison; drop-path
draws are per process, so it is 0 here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli.config import resolve_config, validate_config
from fastdino_cli.data.masking import CropSample, MultiCropCollate
from fastdino_cli.errors import ConfigError
from fastdino_cli.ssl.meta import SSLMetaArch
from fastdino_cli.train.loop import pretrain

ROOT = Path(__file__).resolve().parents[1]
HEAD = "{n_prototypes: 32, bottleneck_dim: 16, hidden_dim: 32, nlayers: 2}"
STAGES = (
    "[{name: low, end: 0.5, global_crops_size: 16, local_crops_size: 8},"
    " {name: high, end: 1.0, global_crops_size: 24, local_crops_size: 16, restart: true,"
    " warmup_epochs: 0.5, noise_patching: {enabled: true, max_sigma: 0.2}}]"
)
GLOBAL_BATCH = 8
TOL = 1e-6
BF16 = ["train.precision=bf16", "distributed.param_dtype=bf16", "distributed.reduce_dtype=fp32"]
BF16_LOSS_RTOL = 5e-3
"""2 x bf16-sharded vs 1 x bf16 autocast: measured <= 1.7e-3 relative per loss term (bf16 vs
fp32 in one process: <= 3.6e-3)."""
BF16_WEIGHT_ATOL = {"teacher": 1e-5, "student": 2e-3}
"""Measured 8.4e-7 (teacher) and 2.0e-4 (student) after 4 steps."""
METRIC_KEYS = ("loss", "dino_global", "dino_local", "ibot", "teacher_entropy")


def overrides(out: Path, data: Path, per_process: int, extra=()) -> list[str]:
    return [
        "model.arch=vit_tiny",
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "model.patch_size=8",
        "model.img_size=16",
        "model.drop_path_rate=0.0",
        f"data.train={data}",
        "data.num_workers=0",
        "crops.local_crops_number=2",
        "crops.global_crops_size=16",
        "crops.local_crops_size=8",
        f"dino.head={HEAD}",
        f"ibot.head={HEAD}",
        "dino.koleo_loss_weight=0.0",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "optim.freeze_last_layer_epochs=0.5",
        "teacher.warmup_temp_epochs=1",
        "train.epoch_length=2",
        f"train.batch_size_per_gpu={per_process}",
        "train.checkpoint_period=1",
        "train.keep_checkpoints=4",
        "train.log_period=1",
        f"train.output_dir={out}",
        f"curriculum.stages={STAGES}",
        *extra,
    ]


def step2(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step_00000002.pt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_workers(base: Path, jobs: list[dict]) -> Iterator[subprocess.Popen]:
    """Run ``jobs`` in two gloo processes (``tests/_distributed_worker.py``) while the caller's
    block runs its single-process reference; the output goes to ``base/torchrun.log``."""
    (base / "jobs.json").write_text(json.dumps(jobs))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(ROOT / "tests" / "_distributed_worker.py"),
        str(base / "jobs.json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("FASTDINO_LAUNCHED", None)
    with open(base / "torchrun.log", "w") as log:
        yield subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data):
    base = tmp_path_factory.mktemp("dist")
    data = demo_data.train
    a, b, c, r = base / "two_a", base / "two_b", base / "two_nan", base / "one_r"
    f = base / "two_fused_nan"
    a16, b16, r16 = base / "two_bf16", base / "two_bf16_resumed", base / "one_bf16"
    jobs = [
        {"overrides": overrides(a, data, GLOBAL_BATCH // 2)},
        {"overrides": overrides(b, data, GLOBAL_BATCH // 2), "start_from": [str(step2(a)), str(b)]},
        {
            "overrides": overrides(c, data, GLOBAL_BATCH // 2, ["train.max_steps=3"]),
            "nan_loss": [1, 1],
        },
        {  # as C with fused AdamW: the skip is decided on the device (found_inf), no host read
            "overrides": overrides(
                f, data, GLOBAL_BATCH // 2, ["train.max_steps=3", "optim.fused=true"]
            ),
            "nan_loss": [1, 1],
        },
        # FSDP2 mixed precision: bf16 gathered weights, fp32 gradient reduction (A16), and a
        # resume of its step-2 checkpoint (B16)
        {
            "overrides": overrides(a16, data, GLOBAL_BATCH // 2, BF16),
            "probe_dtype": str(base / "a16_dtype.json"),
        },
        {
            "overrides": overrides(b16, data, GLOBAL_BATCH // 2, BF16),
            "start_from": [str(step2(a16)), str(b16)],
        },
    ]
    with two_workers(base, jobs) as proc:
        # the single-process reference trains while the two workers run
        pretrain(resolve_config(None, None, overrides(r, data, GLOBAL_BATCH)), progress=False)
        pretrain(
            resolve_config(None, None, overrides(r16, data, GLOBAL_BATCH, BF16)), progress=False
        )
        rc = proc.wait(timeout=300)
    assert rc == 0, (base / "torchrun.log").read_text()[-4000:]
    return {
        **{"a": a, "b": b, "c": c, "f": f, "r": r, "base": base, "data": data},
        **{"a16": a16, "b16": b16, "r16": r16},
    }


@pytest.mark.distributed
@pytest.mark.slow
def test_two_sharded_processes_match_one_process(runs):
    one, two = _rows(runs["r"]), _rows(runs["a"])
    assert [x["step"] for x in two] == list(range(4)) == [x["step"] for x in one]
    assert [x["stage"] for x in two] == [0, 0, 1, 1]
    for x, y in zip(one, two, strict=True):
        for k in METRIC_KEYS:
            assert abs(x[k] - y[k]) <= TOL * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
        assert x["lr"] == y["lr"] and x["global_crops_size"] == y["global_crops_size"]
    r, a = ckpt_io.load(runs["r"] / "final.pt"), ckpt_io.load(runs["a"] / "final.pt")
    assert _max_diff(r["teacher"], a["teacher"]) < TOL
    assert _max_diff(r["student"], a["student"]) < TOL


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_checkpoint_loads_in_one_process(runs):
    for name in ("final.pt", "checkpoint.pt"):
        ckpt = ckpt_io.load(runs["a"] / name)  # weights_only=True: plain tensors only
        cfg = validate_config(ckpt["config"])
        model = SSLMetaArch(
            model=cfg.model, dino=cfg.dino, ibot=cfg.ibot, centering=cfg.train.centering
        )
        ckpt_io.load_state_dict_strict(model.student, ckpt["student"], "student")
        ckpt_io.load_state_dict_strict(model.teacher, ckpt["teacher"], "teacher")
        assert all(type(t) is torch.Tensor for t in ckpt["teacher"].values())
    ts = ckpt["train_state"]
    assert ts["world_size"] == 2 and ts["step"] == 4 and len(ts["rng_per_rank"]) == 2
    # the optimizer state is the unsharded torch.optim format: integer ids, full shapes
    opt = ts["optimizer"]
    names = [n for g in opt["param_groups"] for n in g["names"]]
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    assert ids == list(range(len(ids))) and set(opt["state"]) <= set(ids)
    shapes = {k: v.shape for k, v in model.student.named_parameters()}
    for i, state in opt["state"].items():
        assert state["exp_avg"].shape == shapes[names[i]]
    backbone, _ = ckpt_io.load_teacher_backbone(runs["a"] / "final.pt")
    assert backbone.embed_dim == 32 and len(backbone.blocks) == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_resumed_sharded_run_is_exact(runs):
    a, b = _rows(runs["a"])[2:], _rows(runs["b"])
    assert [x["step"] for x in b] == [2, 3]
    keys = ("step", "stage", *METRIC_KEYS, "lr", "momentum", "teacher_temp")
    assert [tuple(x[k] for k in keys) for x in a] == [tuple(x[k] for k in keys) for x in b]
    fa, fb = ckpt_io.load(runs["a"] / "final.pt"), ckpt_io.load(runs["b"] / "final.pt")
    for part in ("teacher", "student"):
        assert fa[part].keys() == fb[part].keys()
        assert all(torch.equal(fa[part][k], fb[part][k]) for k in fa[part])


@pytest.mark.distributed
@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_skips_the_step_on_all_ranks(runs):
    """Rank 1's loss is NaN at step 1: both ranks skip it (no hang, no divergence)."""
    a, c = _rows(runs["a"]), _rows(runs["c"])
    assert [x["finite"] for x in c] == [True, False, True]
    assert c[0]["loss"] == a[0]["loss"]
    assert c[2]["finite"] and c[2]["loss"] == c[2]["loss"]  # finite again after the skip
    final = ckpt_io.load(runs["c"] / "final.pt")
    assert all(bool(torch.isfinite(t).all()) for t in final["teacher"].values())
    # the last checkpoint is the one of step 3 (the skipped step 1 wrote none)
    assert ckpt_io.load(runs["c"] / "checkpoint.pt")["train_state"]["step"] == 3
    # fused AdamW skips the same step on the device of both ranks, and trains like the host skip
    f = _rows(runs["f"])
    assert [x["finite"] for x in f] == [True, False, True]
    assert f[2]["loss"] == pytest.approx(c[2]["loss"], rel=1e-5)
    fused = ckpt_io.load(runs["f"] / "final.pt")["teacher"]
    assert _max_diff(fused, final["teacher"]) < 1e-5


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_checkpoint_resumes_in_one_process(runs, tmp_path):
    """A checkpoint of 2 processes x 4 images continues in 1 process x 8 images."""
    out = tmp_path / "one_from_two"
    out.mkdir()
    shutil.copy(step2(runs["a"]), out / "checkpoint.pt")
    cfg = resolve_config(None, None, overrides(out, runs["data"], GLOBAL_BATCH))
    # batch_size_per_gpu 4 -> 8 keeps the global batch: not a config change, no --force-config
    res = pretrain(cfg, progress=False)
    assert res.resumed_from == 2 and res.steps_done == 4
    ref = {x["step"]: x for x in _rows(runs["a"])}
    for x in _rows(out):
        for k in METRIC_KEYS:
            assert abs(x[k] - ref[x["step"]][k]) <= TOL * max(1.0, abs(x[k]))
    final, a = ckpt_io.load(out / "final.pt"), ckpt_io.load(runs["a"] / "final.pt")
    assert _max_diff(final["teacher"], a["teacher"]) < TOL
    # another global batch is a real config change
    other = resolve_config(None, None, overrides(out, runs["data"], 4))
    with pytest.raises(ConfigError, match="batch_size_per_gpu: 8 -> 4"):
        pretrain(other, progress=False)


def _sample(step: int, value: float) -> CropSample:
    g = torch.full((3, 16, 16), value)
    return CropSample([g, g + 0.5], [], step, 0, 0.0, [])


def test_each_rank_takes_its_rows_of_the_global_mask_draw():
    kw = {"patch_size": 4, "mask_probability": 0.5, "ratio_min_max": (0.1, 0.5), "seed": 3}
    samples = [_sample(7, float(i)) for i in range(6)]
    whole = MultiCropCollate(**kw)(samples)
    parts = [
        MultiCropCollate(**kw, rank=r, world_size=2)(samples[3 * r : 3 * r + 3]) for r in (0, 1)
    ]
    # crop-major: global rows are [crop 1 of samples 0..5, crop 2 of samples 0..5]
    for r, part in enumerate(parts):
        rows = [c * 6 + 3 * r + j for c in range(2) for j in range(3)]
        assert torch.equal(part.masks, whole.masks[rows])
        assert torch.equal(part.global_crops, whole.global_crops[rows])
    assert not torch.equal(parts[0].masks, parts[1].masks)  # ranks do not share one draw


def test_param_dtype_follows_precision_and_refuses_fp16(monkeypatch):
    from fastdino_cli.config import DistributedConfig
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.train import distributed as d

    auto = DistributedConfig()
    assert d.resolve_param_dtype(auto, "auto", "cpu") is None
    assert d.resolve_param_dtype(auto, "bf16", "cuda") is torch.bfloat16
    assert d.resolve_param_dtype(auto, "fp32", "cuda") is None
    assert d.resolve_param_dtype(DistributedConfig(param_dtype="bf16"), "auto", "cpu") is (
        torch.bfloat16
    )
    with pytest.raises(ConfigError, match="fp16 with FSDP2 sharding"):
        d.resolve_param_dtype(auto, "fp16", "cuda")
    with pytest.raises(ConfigError, match="fp16 with FSDP2 sharding"):
        d.resolve_param_dtype(DistributedConfig(param_dtype="fp16"), "auto", "cpu")
    # precision auto on a GPU: bf16 where supported, else the loop would autocast in fp16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert d.resolve_param_dtype(auto, "auto", "cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="fp16 with FSDP2 sharding"):
        d.resolve_param_dtype(auto, "auto", "cuda")


def test_sharding_only_with_several_processes_and_never_half_accelerate_fsdp(monkeypatch):
    from fastdino_cli.config import DistributedConfig
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.train import distributed as d

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not d.fsdp_enabled(DistributedConfig(), 1)
    assert d.fsdp_enabled(DistributedConfig(), 2)
    assert not d.fsdp_enabled(DistributedConfig(fsdp=False), 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert d.fsdp_enabled(DistributedConfig(), 8)
    with pytest.raises(ConfigError, match="distributed.fsdp=false"):
        d.fsdp_enabled(DistributedConfig(fsdp=False), 8)
    assert d.rank_and_world() == (0, 1)
    with pytest.raises(RuntimeError, match="process group"):
        d.apply_fsdp(torch.nn.Linear(2, 2), DistributedConfig(), "fp32")


def test_sharded_load_checks_keys_and_shapes_with_the_one_strict_message():
    from fastdino_cli.errors import CheckpointError
    from fastdino_cli.train.distributed import _check_keys

    module = torch.nn.Linear(3, 2)
    _check_keys(module, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, "teacher")
    with pytest.raises(CheckpointError, match=r"cannot load teacher: missing keys \[bias\]"):
        _check_keys(module, {"weight": torch.zeros(2, 3)}, "teacher")
    with pytest.raises(CheckpointError, match=r"shape mismatches \[weight \(3, 3\) vs \(2, 3\)\]"):
        _check_keys(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(2)}, "teacher")
    # only a check: the tensors themselves are loaded shard by shard by set_model_state_dict
    _check_keys(module, {"weight": torch.ones(2, 3), "bias": torch.ones(2)}, "teacher")
    assert not torch.equal(module.weight, torch.ones(2, 3))


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_bf16_mixed_precision_matches_one_bf16_process(runs):
    """``param_dtype=bf16, reduce_dtype=fp32`` on gloo: the weights are gathered in bf16 inside
    the forward, the master weights (and the checkpoint) stay fp32, and the run agrees with one
    process autocasting to bf16 within bf16 rounding."""
    assert json.loads((runs["base"] / "a16_dtype.json").read_text()) == {
        "forward": "torch.bfloat16"
    }
    one, two = _rows(runs["r16"]), _rows(runs["a16"])
    assert [x["step"] for x in two] == list(range(4)) == [x["step"] for x in one]
    for x, y in zip(one, two, strict=True):
        for k in METRIC_KEYS:
            assert y[k] == pytest.approx(x[k], rel=BF16_LOSS_RTOL), (x["step"], k, x[k], y[k])
    r, a = ckpt_io.load(runs["r16"] / "final.pt"), ckpt_io.load(runs["a16"] / "final.pt")
    for part, atol in BF16_WEIGHT_ATOL.items():
        assert all(t.dtype == torch.float32 for t in a[part].values())
        assert _max_diff(r[part], a[part]) < atol
    # not vacuous: bf16 sharding differs from the fp32 sharded run by far more than fp32 rounding
    fp32 = ckpt_io.load(runs["a"] / "final.pt")
    assert _max_diff(fp32["student"], a["student"]) > 100 * TOL


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp2_bf16_resume_is_exact_and_its_checkpoint_resumes_in_one_process(runs, tmp_path):
    a, b = _rows(runs["a16"])[2:], _rows(runs["b16"])
    keys = ("step", "stage", *METRIC_KEYS, "lr", "momentum", "teacher_temp")
    assert [tuple(x[k] for k in keys) for x in a] == [tuple(x[k] for k in keys) for x in b]
    fa, fb = ckpt_io.load(runs["a16"] / "final.pt"), ckpt_io.load(runs["b16"] / "final.pt")
    for part in ("teacher", "student"):
        assert all(torch.equal(fa[part][k], fb[part][k]) for k in fa[part])
    # the 2-process bf16 checkpoint continues in one process (bf16 autocast, 8 images)
    out = tmp_path / "one_from_two_bf16"
    out.mkdir()
    shutil.copy(step2(runs["a16"]), out / "checkpoint.pt")
    res = pretrain(
        resolve_config(None, None, overrides(out, runs["data"], GLOBAL_BATCH, BF16)),
        progress=False,
    )
    assert res.resumed_from == 2 and res.steps_done == 4
    ref = {x["step"]: x for x in _rows(runs["a16"])}
    for x in _rows(out):
        for k in METRIC_KEYS:
            assert x[k] == pytest.approx(ref[x["step"]][k], rel=BF16_LOSS_RTOL)
    final = ckpt_io.load(out / "final.pt")
    assert _max_diff(final["teacher"], fa["teacher"]) < BF16_WEIGHT_ATOL["teacher"]
