"""Training step time, images/s and data-wait fraction of a preset on the current device.

Usage: python benchmarks/pretrain_step.py --preset demo [--steps 20] [--warmup 3] [key=value ...]
Runs the real loop (``train.loop.pretrain``) for warmup + steps iterations in a temporary run
directory with one metrics line per step, drops the warmup steps and prints ONE JSON line with
the medians, the device, the date and the resolved crop sizes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastdino_cli.config import resolve_config  # noqa: E402
from fastdino_cli.train.loop import pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_config(
            args.preset,
            None,
            [
                *args.overrides,
                f"train.max_steps={args.warmup + args.steps}",
                "train.log_period=1",
                "train.checkpoint_period=1000000",
                f"train.output_dir={tmp}/run",
            ],
        )
        pretrain(cfg, progress=False)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().split()]
    rows = [r for r in rows if r["step"] >= args.warmup]
    gb = cfg.train.batch_size_per_gpu
    step_s = statistics.median(gb / r["images_per_s"] for r in rows)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        json.dumps(
            {
                "benchmark": "pretrain_step",
                "preset": args.preset,
                "overrides": args.overrides,
                "steps": len(rows),
                "batch_size": gb,
                "global_crops_size": rows[-1]["global_crops_size"],
                "local_crops_size": rows[-1]["local_crops_size"],
                "step_s": round(step_s, 4),
                "images_per_s": round(gb / step_s, 2),
                "data_wait": round(statistics.median(r["data_wait"] for r in rows), 3),
                "device": device,
                "cpu": platform.processor() or platform.machine(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
        )
    )


if __name__ == "__main__":
    main()
