"""A paper preset means the same recipe on 1, 4 or 8 GPUs (issue 19 section 3).

Presets state the GLOBAL batch and an epoch in images; the per-device batch and the iterations
follow from the world size; an indivisible global batch is a one-line error; an override is
allowed and ``--plan`` / ``config.yaml`` say the run departs from the paper; runs stored with
the old per-GPU keys still load and resume; the learning rate is scaled for the global batch.
"""

from __future__ import annotations

import math

import pytest
import yaml

from fastdino_cli import checkpoint as ckpt_io
from fastdino_cli import rundir as rd
from fastdino_cli.config import (
    Config,
    TrainConfig,
    load_config_yaml,
    paper_departures,
    resolve_config,
    restate_stored_run,
    run_config_yaml,
)
from fastdino_cli.errors import ConfigError
from fastdino_cli.train.build import build_schedules
from fastdino_cli.train.plan import plan_config, plan_run, render_plan
from tests.cli_run import run

PAPER = {  # preset: (global batch, images per epoch, iterations per epoch), from the reference
    "vits16-in100": (40, 50_000, 1250),
    "vits16-in100-dinov2": (40, 50_000, 1250),
    "vitb16-in1k": (512, 1_280_000, 2500),
    "vitb16-in1k-dinov2": (512, 1_280_000, 2500),
}


# ---- the same recipe on any number of GPUs ---------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_preset_plans_the_same_run_on_1_4_8_gpus(preset):
    cfg = resolve_config(preset)
    g, epoch_images, per_epoch = PAPER[preset]
    assert cfg.train.global_batch == g and cfg.train.epoch_images == epoch_images
    assert cfg.paper is not None and cfg.paper.global_batch == g
    assert cfg.paper.epoch_images == epoch_images
    plans = {n: plan_config(cfg, gpus=n) for n in (1, 4, 8)}
    for n, p in plans.items():
        assert p.global_batch == g and p.batch_size_per_gpu * n == g  # derived per device
        assert p.iterations_per_epoch == per_epoch and p.epoch_images == epoch_images
        assert p.images == p.total_steps * g == cfg.optim.epochs * epoch_images
        assert p.epochs == cfg.optim.epochs and p.departures == []
    one = plans[1]
    for p in (plans[4], plans[8]):
        assert (p.images, p.epochs, p.total_steps) == (one.images, one.epochs, one.total_steps)
        assert p.pflops == one.pflops and p.gflops_per_image == one.gflops_per_image
        assert [s.pflops for s in p.stages] == [s.pflops for s in one.stages]
        assert p.peak_lr == one.peak_lr == pytest.approx(0.004 * math.sqrt(g / 1024))


def test_plan_cli_prints_the_same_images_epochs_and_flops_for_1_4_8_gpus(capsys):
    texts = {}
    for n in (1, 4, 8):
        code, out, err = run(["pretrain", "--preset", "vits16-in100", "--plan", "--gpus", str(n)],
                             capsys)  # fmt: skip
        assert code == 0, err
        flops, memory = out.split("\n\nmemory per device")  # the memory is per GPU
        head, *rest = flops.splitlines()
        assert f"({40 // n}/GPU x {n} GPU)" in head and f"{40 // n} images/GPU" in memory
        texts[n] = rest
    assert texts[1] == texts[4] == texts[8]
    assert texts[1][0].startswith("10,000,000 images = 200 epochs of 50,000 images (1250 steps")
    assert texts[1][1].startswith("the paper's recipe: FastDINOv2, ViT-S/16 on ImageNet-100")


def test_a_per_gpu_batch_still_scales_with_the_gpus():
    cfg = resolve_config("demo", overrides=["train.batch_size_per_gpu=8"])
    assert cfg.train.global_batch is None  # the override cleared the preset's global batch
    assert [cfg.batch(n).global_batch for n in (1, 4)] == [8, 32]
    assert cfg.batch(4).per_device == 8


# ---- an indivisible global batch -------------------------------------------------------------


def test_indivisible_global_batch_is_a_one_line_error(capsys):
    with pytest.raises(ConfigError) as e:
        resolve_config("vits16-in100").batch(3)
    msg = str(e.value)
    assert "train.global_batch=40" in msg and "3 GPUs" in msg
    assert "(1, 2, 4, 5, 8, 10, 20, 40)" in msg and "e.g. 39 or 42" in msg
    code, out, err = run(["pretrain", "--preset", "vitb16-in1k", "--plan", "--gpus", "3"], capsys)
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "train.global_batch=512 does not divide over 3 GPUs" in err and "Traceback" not in err


def test_indivisible_global_batch_stops_before_any_process_is_launched(monkeypatch, capsys):
    launched = []
    monkeypatch.setattr("fastdino_cli.train.launch.relaunch", lambda *a: launched.append(a))
    code, _, err = run(["pretrain", "--preset", "vits16-in100", "--gpus", "3"], capsys)
    assert code == 2 and launched == [] and "does not divide over 3 GPUs" in err


# ---- overriding the paper's batch or epoch ---------------------------------------------------


def test_override_departs_from_the_paper_in_plan_and_config_yaml():
    cfg = resolve_config("vits16-in100", overrides=["train.global_batch=80"])
    assert cfg.iterations_per_epoch == 625  # the epoch keeps its 50,000 images
    (batch_note,) = paper_departures(cfg, 4)
    assert "global batch 80 (train.global_batch=80), the paper's is 40" in batch_note
    plan = plan_run(cfg, gpus=4)
    assert plan.run.peak_lr == pytest.approx(0.004 * math.sqrt(80 / 1024))
    text = render_plan(plan)
    assert "DEPARTS from the paper's recipe (FastDINOv2, ViT-S/16 on ImageNet-100" in text
    assert batch_note in text and "20/GPU x 4 GPU" in text
    written = run_config_yaml(cfg, 4)
    head = [ln for ln in written.splitlines() if ln.startswith("# paper:")]
    assert len(head) == 2 and "departs from the recipe of FastDINOv2" in head[0]
    assert head[1] == f"# paper: - {batch_note}"
    assert load_config_yaml(written) == cfg  # comments only: the config reads back unchanged
    # the paper's own batch: no note
    assert not run_config_yaml(resolve_config("vits16-in100"), 8).startswith("#")


def test_epoch_and_per_gpu_departures_are_named():
    cfg = resolve_config("vits16-in100-dinov2", overrides=["train.epoch_length=100"])
    assert cfg.train.epoch_images is None and cfg.total_iterations == 200 * 100
    assert paper_departures(cfg, 1) == [
        "an epoch is 100 iterations x 40 = 4,000 images, the paper's is 50,000"
    ]
    # a per-GPU batch with an epoch in iterations: the departure depends on the GPU count
    cfg = resolve_config(
        "vits16-in100-dinov2", overrides=["train.epoch_length=1250", "train.batch_size_per_gpu=10"]
    )
    assert paper_departures(cfg, 4) == []  # 10 x 4 GPUs: exactly the paper's run
    one = paper_departures(cfg, 1)
    assert one[0].startswith("global batch 10 (train.batch_size_per_gpu=10 x 1 GPU)")
    assert one[1] == "an epoch is 1250 iterations x 10 = 12,500 images, the paper's is 50,000"


def test_batch_keys_one_per_pair():
    # a per-GPU batch with an epoch in images would change the iterations with the GPU count
    with pytest.raises(ConfigError, match=r"train\.batch_size_per_gpu=4 with train\.epoch_images"):
        resolve_config("vits16-in100", overrides=["train.batch_size_per_gpu=4"])
    with pytest.raises(ValueError, match="both state the batch; set one of them"):
        TrainConfig(global_batch=8, batch_size_per_gpu=4)
    with pytest.raises(ConfigError, match="are both null"):
        resolve_config("demo", overrides=["train.global_batch=null"])
    # a later layer (each override is one) replaces the earlier layer's key of the pair
    later = resolve_config(None, None, ["train.epoch_images=100", "train.epoch_length=5"])
    assert later.train.epoch_images is None and later.iterations_per_epoch == 5
    assert TrainConfig(batch_size_per_gpu=4).global_batch is None
    assert TrainConfig(epoch_images=1000, global_batch=10).epoch_length is None


def test_a_config_file_that_sets_both_keys_of_a_pair_is_one_line(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  global_batch: 40\n  batch_size_per_gpu: 10\n")
    code, _, err = run(["pretrain", "--config", str(f), "--plan"], capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "train.global_batch=40 and train.batch_size_per_gpu=10 both state the batch" in err
    # a file with one of them replaces the preset's other
    f.write_text("train:\n  batch_size_per_gpu: 10\n  epoch_length: 1250\n")
    cfg = resolve_config("vits16-in100", f)
    assert cfg.train.global_batch is None and cfg.train.epoch_images is None
    assert cfg.batch(4).global_batch == 40 and paper_departures(cfg, 4) == []


# ---- the learning rate is scaled for the global batch ----------------------------------------


def test_lr_is_the_same_on_1_4_and_8_gpus():
    cfg = resolve_config("vits16-in100")
    scheds = [build_schedules(cfg, world_size=n) for n in (1, 4, 8)]
    peak = 0.004 * math.sqrt(40 / 1024)  # DINOv2: base_lr x sqrt(global batch / 1024)
    warmup = 10 * 1250
    for t in (0, 1, warmup - 1, warmup, 100_000, 187_500, 187_500 + 12_499, 249_999):
        lrs = {s.at(t).lr for s in scheds}
        assert len(lrs) == 1, t
    assert scheds[0].at(warmup - 1).lr == pytest.approx(peak, rel=1e-12)
    # a per-GPU batch: the lr follows the global batch it makes
    per_gpu = resolve_config("demo", overrides=["train.batch_size_per_gpu=16"])
    one, four = (build_schedules(per_gpu, world_size=n) for n in (1, 4))
    w = round(per_gpu.optim.warmup_epochs * per_gpu.iterations_per_epoch)
    assert four.at(w - 1).lr == pytest.approx(2 * one.at(w - 1).lr)  # sqrt(4)


# ---- runs stored with the old per-GPU keys ----------------------------------------------------


def _old_style(data: dict, world: int = 4) -> dict:
    """``data`` (a resolved config) as a run stored before train.global_batch wrote it."""
    out = {k: v for k, v in data.items() if k != "paper"}
    train = dict(out["train"])
    g, epoch = train.pop("global_batch"), train.pop("epoch_images")
    train.pop("epoch_length"), train.pop("batch_size_per_gpu")
    out["train"] = {"batch_size_per_gpu": g // world, "epoch_length": epoch // g, **train}
    return out


def test_old_stored_config_loads_and_restates_to_the_preset():
    new = resolve_config("vits16-in100")
    old = _old_style(new.to_dict(), world=4)
    assert "global_batch" not in old["train"]
    loaded = Config.model_validate(old)  # an old config.yaml still validates
    assert loaded.train.global_batch is None and loaded.train.epoch_images is None
    assert loaded.batch(4).global_batch == 40 and loaded.iterations_per_epoch == 1250
    # checkpointed on 4 GPUs x 10: the paper's run, resumable with the preset on 1 GPU
    same = restate_stored_run(old, 4, new, 1)
    assert rd.config_differences(same, new.to_dict()) == []
    # checkpointed on 2 GPUs x 10: another global batch, still reported
    other = restate_stored_run(old, 2, new, 1)
    diffs = rd.config_differences(other, new.to_dict())
    assert any(d.startswith("train.batch_size_per_gpu: 10 -> None") for d in diffs), diffs


def test_old_stored_config_yaml_resumes_without_a_preset(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(cfg, *, resume=None, force_config=False):
        from fastdino_cli.train.loop import RunResult

        seen["cfg"] = cfg
        return RunResult(tmp_path, 3, 500, tmp_path / "final.pt", "max_steps")

    monkeypatch.setattr("fastdino_cli.train.loop.pretrain", fake)
    old = _old_style(resolve_config("vitb16-in1k").to_dict(), world=4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    code, _, err = run(["pretrain", "--out", str(tmp_path), "--resume"], capsys)
    assert code == 0, err
    cfg = seen["cfg"]
    assert cfg.train.batch_size_per_gpu == 128 and cfg.train.epoch_length == 2500
    assert cfg.batch(4).global_batch == 512
    # a global-batch override on top of the stored per-GPU keys replaces them
    code, _, err = run(["pretrain", "--out", str(tmp_path), "train.global_batch=512"], capsys)
    assert code == 0, err
    assert seen["cfg"].train.batch_size_per_gpu is None and seen["cfg"].batch(8).per_device == 64


@pytest.mark.slow
def test_a_checkpoint_with_the_old_per_gpu_keys_resumes(tmp_path, demo_data, one_thread):
    """A real run directory as the old format left it (config.yaml and checkpoint with only
    ``batch_size_per_gpu`` / ``epoch_length``) continues under the new global-batch keys with no
    --force-config, and trains the same steps as an uninterrupted run."""
    from test_pretrain import tiny

    from fastdino_cli.train.loop import pretrain

    out, ref = tmp_path / "old", tmp_path / "ref"
    first = pretrain(tiny(out, demo_data.train, extra=["train.max_steps=3"]), progress=False)
    assert first.stopped == "max_steps"
    ckpt = ckpt_io.load(out / rd.CHECKPOINT)
    for data in (ckpt["config"],):
        data["train"].pop("global_batch"), data["train"].pop("epoch_images")
        data.pop("paper")
    ckpt_io.save(ckpt, out / rd.CHECKPOINT)
    stored = yaml.safe_load((out / rd.CONFIG).read_text())
    stored["train"].pop("global_batch"), stored["train"].pop("epoch_images")
    stored.pop("paper")
    (out / rd.CONFIG).write_text(yaml.safe_dump(stored))
    # the same run stated the new way: a global batch of 4 (1 process) and 8 images per epoch,
    # against a (made-up) paper recipe of 8 per step: the run's config.yaml says it departs
    new_keys = ["train.global_batch=4", "train.epoch_images=8"]
    paper = "paper={recipe: a tiny recipe, global_batch: 8, epoch_images: 8}"
    res = pretrain(tiny(out, demo_data.train, extra=[*new_keys, paper]), progress=False)
    assert res.resumed_from == 3 and res.stopped == "finished"
    written = (out / rd.CONFIG).read_text()
    assert written.startswith("# paper: this run departs from the recipe of a tiny recipe:\n")
    assert "# paper: - global batch 4 (train.global_batch=4), the paper's is 8" in written
    assert load_config_yaml(written).train.global_batch == 4
    pretrain(tiny(ref, demo_data.train), progress=False)
    a = ckpt_io.load(out / rd.FINAL)["teacher"]
    b = ckpt_io.load(ref / rd.FINAL)["teacher"]
    assert all(a[k].equal(b[k]) for k in b)
