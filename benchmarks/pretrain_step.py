"""Training step time, images/s, peak memory and MFU of the real loop on the current device.

Usage::

    python benchmarks/pretrain_step.py --preset demo [--steps 20] [--warmup 3] [key=value ...]
    python benchmarks/pretrain_step.py --arch vit_small vit_base --size 112 224 --batch 64 \\
        [--peak-tflops 989] [--workers 16] [--data DIR] [model.compile=true ...]

Runs ``train.loop.pretrain`` for warmup + steps iterations in a temporary run directory with one
metrics line per step, drops the warmup steps and prints ONE JSON line. With ``--arch``/``--size``
it runs every (arch, size) pair: the arch's paper preset (``vits16-in100`` / ``vitb16-in1k``,
patch 16, 65536-prototype heads, 2 global + 8 local crops) reduced to one stage at that global
size (local size 3/7 of it: 112/48, 224/96), on generated ~500x375 JPEGs unless ``--data``.

MFU = FLOPs per training image (``train.flops.image_cost``: student forward+backward on every
crop, teacher forward on the global crops, heads) x images/s / peak FLOP/s. The peak is
``--peak-tflops`` or, on CUDA, the dense bf16 figure of the device from ``PEAK_BF16_TFLOPS``;
``mfu`` counts the whole step, data waiting included, ``mfu_compute`` leaves the measured data
wait out. On CPU there is no peak unless given: MFU is then null.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.config import Config, resolve_config  # noqa: E402
from fastdino_cli.rundir import METRICS, read_metrics  # noqa: E402
from fastdino_cli.train.flops import config_image_cost  # noqa: E402
from fastdino_cli.train.loop import pretrain  # noqa: E402

PEAK_BF16_TFLOPS = (  # dense (no sparsity) bf16 tensor-core peaks, vendor data sheets
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM / HBM3
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)
ARCH_PRESETS = {"vit_small": "vits16-in100", "vit_base": "vitb16-in1k"}


def device_peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


def run_once(preset: str, overrides: list[str], steps: int, warmup: int) -> tuple[Config, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(
            preset,
            None,
            [
                *overrides,
                f"train.max_steps={warmup + steps}",
                "train.log_period=1",
                "train.checkpoint_period=1000000",
                f"train.output_dir={tmp}/run",
            ],
        )
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON line only
            pretrain(cfg, progress=False)
        rows = read_metrics(Path(tmp) / "run" / METRICS)
    rows = [r for r in rows if r["step"] >= warmup]
    gb = cfg.batch(1).global_batch
    step_s = statistics.median(gb / r["images_per_s"] for r in rows)
    wait = statistics.median(r["data_wait"] for r in rows)
    out = {
        "preset": preset,
        "arch": cfg.model.arch,
        "overrides": [o for o in overrides if not o.startswith("data.train=")],
        "data": next((o[11:] for o in overrides if o.startswith("data.train=")), None),
        "steps": len(rows),
        "batch_size": gb,
        "global_crops_size": rows[-1]["global_crops_size"],
        "local_crops_size": rows[-1]["local_crops_size"],
        "local_crops_number": cfg.crops.local_crops_number,
        "step_s": round(step_s, 4),
        "images_per_s": round(gb / step_s, 3),
        "data_wait": round(wait, 3),
        "compile": cfg.model.compile,
        "activation_checkpointing": cfg.model.activation_checkpointing,
    }
    if torch.cuda.is_available():
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:  # the process's peak resident set (includes Python and the data)
        out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return cfg, out


def add_mfu(cfg: Config, row: dict, peak_tflops: float | None) -> dict:
    gflops = config_image_cost(cfg, row["global_crops_size"], row["local_crops_size"]).total
    achieved = gflops * row["images_per_s"] / 1e3  # TFLOP/s
    compute = achieved / max(1e-9, 1.0 - row["data_wait"])
    row["gflops_per_image"] = round(gflops, 2)
    row["achieved_tflops"] = round(achieved, 3)
    row["mfu"] = round(achieved / peak_tflops, 4) if peak_tflops else None
    row["mfu_compute"] = round(compute / peak_tflops, 4) if peak_tflops else None
    return row


def generated_data(root: Path, n: int) -> str:
    from benchmarks.data_pipeline import make_jpegs

    root.mkdir(parents=True, exist_ok=True)
    make_jpegs(root, n)
    return str(root)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--arch", nargs="+", choices=sorted(ARCH_PRESETS), default=None)
    ap.add_argument("--size", nargs="+", type=int, default=None, help="global crop sizes")
    ap.add_argument("--batch", type=int, default=None, help="train.global_batch (one process)")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers")
    ap.add_argument("--data", default=None, help="image folder (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=256, help="generated JPEGs")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops or (device_peak_tflops(device) if device != "cpu" else None)
    common = list(args.overrides)
    if args.batch:
        common.append(f"train.global_batch={args.batch}")
    if args.workers is not None:
        common.append(f"data.num_workers={args.workers}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch or args.size:
            data = args.data or generated_data(Path(tmp) / "images", args.images)
            label = args.data or f"{args.images} generated 500x375 JPEGs"
            for arch in args.arch or ["vit_small"]:
                for size in args.size or [224]:
                    local = round(size * 3 / 7)
                    stage = f"[{{end: 1.0, global_crops_size: {size}, local_crops_size: {local}}}]"
                    extra = [f"data.train={data}", f"curriculum.stages={stage}", *common]
                    cfg, row = run_once(ARCH_PRESETS[arch], extra, args.steps, args.warmup)
                    runs.append(add_mfu(cfg, row, peak) | {"data": label})
        else:
            if args.data:
                common.append(f"data.train={args.data}")
            cfg, row = run_once(args.preset, common, args.steps, args.warmup)
            runs.append(add_mfu(cfg, row, peak))
    result = {
        "benchmark": "pretrain_step",
        "device": device,
        "peak_bf16_tflops": peak,
        "hardware": machine(device),
        "runs": runs,
    }
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
