"""The memory estimate of ``pretrain --plan`` (``train/memory.py``) against measured CPU peaks.

For each case (two model sizes, each with and without activation checkpointing, fp32 and bf16)
a FRESH process builds the loop's own training stack (``train.build.build_training``) on the
CPU and runs 2 full steps (forward, backward, clipping, AdamW, EMA) on a synthetic batch of the
stage's shapes. The measured peak is the process's peak resident memory during those steps
(``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` just before them)
minus its resident memory before the model was built (interpreter, torch, the batch). The
estimate is ``MemoryPlan.peak`` of the same config on one device; the cast-copy term (autocast's
cache of low-precision weights) is included as the estimate states it. Prints one JSON line;
``error`` = estimate / measured - 1.

    python benchmarks/memory_plan.py [--out benchmarks/results/memory_plan_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEAD = "{n_prototypes: 4096, bottleneck_dim: 256, hidden_dim: 1024, nlayers: 3}"
CASES = {
    # name: (arch, global px, local px, local crops, batch)
    "vit_tiny_64px": ("vit_tiny", 64, 32, 4, 16),
    "vit_small_96px": ("vit_small", 96, 48, 4, 16),
}


def overrides(arch: str, g: int, loc: int, n_local: int, batch: int, ckpt: bool, prec: str):
    stage = f"[{{name: one, end: 1.0, global_crops_size: {g}, local_crops_size: {loc}}}]"
    return [
        f"model.arch={arch}",
        "model.patch_size=16",
        f"model.img_size={g}",
        "model.drop_path_rate=0.0",
        f"model.activation_checkpointing={str(ckpt).lower()}",
        f"crops.global_crops_size={g}",
        f"crops.local_crops_size={loc}",
        f"crops.local_crops_number={n_local}",
        f"dino.head={HEAD}",
        f"ibot.head={HEAD}",
        f"train.batch_size_per_gpu={batch}",
        f"train.precision={prec}",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "train.epoch_length=10",
        f"curriculum.stages={stage}",
    ]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(items: list[str]) -> dict:
    """In this process: (measured peak bytes, estimated peak bytes) of 2 training steps."""
    import torch
    from accelerate import Accelerator

    from benchmarks.curriculum_speed import synthetic_batch
    from fastdino_cli.config import resolve_config
    from fastdino_cli.train.build import build_training
    from fastdino_cli.train.memory import GIB, plan_memory

    torch.set_num_threads(2)
    cfg = resolve_config(None, None, items)
    batches = [
        synthetic_batch(cfg, s, cfg.crops.global_crops_size, cfg.crops.local_crops_size)
        for s in (1, 2)
    ]
    Accelerator(cpu=True)
    base = _rss_kib("VmRSS") * 1024
    stack = build_training(cfg, accelerator=Accelerator(cpu=True))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for b in batches:
        stack.step(b).resolve()
    peak = _rss_kib("VmHWM") * 1024 - base
    plan = plan_memory(cfg, 1)
    est = plan.peak_gib  # with the config's own activation checkpointing setting
    return {
        "measured_gib": round(peak / GIB, 4),
        "estimated_gib": round(est, 4),
        "estimated_static_gib": round(plan.static_gib, 4),
        "error": round(est * GIB / peak - 1, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    results = {}
    for name, (arch, g, loc, n_local, batch) in CASES.items():
        for prec in ("fp32", "bf16"):
            for ckpt in (False, True):
                items = overrides(arch, g, loc, n_local, batch, ckpt, prec)
                out = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps(items)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                key = f"{name}_{prec}" + ("_ckpt" if ckpt else "")
                results[key] = json.loads(out.stdout.strip().splitlines()[-1])
    errors = [abs(r["error"]) for r in results.values()]
    record = {
        "benchmark": "memory_plan",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": {"platform": platform.platform(), "python": platform.python_version()},
        "cases": {
            k: dict(zip(("arch", "global", "local", "n_local", "batch"), v, strict=True))
            for k, v in CASES.items()
        },  # fmt: skip
        "results": results,
        "max_abs_error": round(max(errors), 4),
        "mean_abs_error": round(sum(errors) / len(errors), 4),
    }
    line = json.dumps(record)
    print(line)
    if args.out:
        from fastdino_cli.fileio import write_text

        write_text(args.out, line + "\n")


if __name__ == "__main__":
    main()
