"""Distilled student vs the same student trained from scratch, on the demo data (issue 23).

Usage::

    python benchmarks/distill.py --teacher runs/demo-dinov2/final.pt [--seeds 0 1 2]
        [--steps 500] [--out /tmp/distill_bench] [--json benchmarks/results/distill_cpu_demo.json]

For each seed it trains, for the same number of steps and with the same schedules and crops,

- ``distilled``: ``--preset demo-distill`` (the student, dim 64 / depth 2 / patch 8, distilled
  from the frozen ``--teacher`` with its heads: DINOv2's recipe);
- ``scratch``: the same preset with ``distill.teacher=null`` (the same student trained by
  ordinary DINOv2 self-distillation: EMA teacher, masking, iBOT on masked tokens);

then probes both ``final.pt`` and the teacher with ``fastdino probe``'s library call (kNN
k=10/20 and the linear probe, demo train -> val split). The FLOPs of each run come from the plan
(``train/plan.py``: the distilled run includes the frozen teacher's forward passes); the wall
time of each training run is recorded too, measured on this machine while it may be shared, so
it is indicative only. Without ``--teacher`` the demo-dinov2 teacher is trained first (~15 min
on 2 CPU cores). Prints the JSON and writes it to ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastdino_cli.config import resolve_config  # noqa: E402
from fastdino_cli.data.demo import resolve_data_root  # noqa: E402
from fastdino_cli.eval.probe.run import run_probe  # noqa: E402
from fastdino_cli.fileio import write_text  # noqa: E402
from fastdino_cli.train.distill import resolve_distill  # noqa: E402
from fastdino_cli.train.loop import pretrain  # noqa: E402
from fastdino_cli.train.plan import plan_config  # noqa: E402


def _train(preset: str, overrides: list[str]) -> tuple[Path, float, float]:
    """(final.pt, training seconds, planned PFLOPs) of one run."""
    cfg = resolve_config(preset, None, overrides)
    pflops = plan_config(cfg).pflops
    t0 = time.perf_counter()
    res = pretrain(cfg, resume=False, progress=False)
    seconds = time.perf_counter() - t0
    if res.final_checkpoint is None:
        raise SystemExit(f"{preset} {overrides} stopped early: {res.stopped}")
    return res.final_checkpoint, seconds, pflops


def _probe(ckpt: Path, epochs: int) -> dict[str, float]:
    report = run_probe(
        [ckpt],
        resolve_data_root("demo", "train"),
        resolve_data_root("demo", "val"),
        epochs=epochs,
        write=False,
        use_cache=False,
        device="cpu",
    )
    row = report.rows[0].flat()
    return {k: row[k] for k in ("knn10", "knn20", "linear", "heldout")}


def _shorter_schedule(epochs: float | None) -> list[str]:
    """Overrides that compress demo-distill's schedules to ``epochs`` (same shape)."""
    if epochs is None:
        return []
    cfg = resolve_config("demo-distill")
    f = epochs / cfg.optim.epochs
    return [
        f"optim.epochs={epochs}",
        f"optim.warmup_epochs={cfg.optim.warmup_epochs * f:g}",
        f"optim.freeze_last_layer_epochs={cfg.optim.freeze_last_layer_epochs * f:g}",
        f"teacher.warmup_temp_epochs={cfg.teacher.warmup_temp_epochs * f:g}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="train.max_steps (default: all)")
    ap.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="a shorter schedule of the same shape: optim.epochs and every epoch-valued "
        "warmup scaled together (default: the preset's)",
    )
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("/tmp/distill_bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = args.out.resolve()
    teacher = args.teacher
    teacher_train_s = None
    if teacher is None:
        teacher, teacher_train_s, _ = _train("demo-dinov2", [f"train.output_dir={out / 'teacher'}"])
    teacher = teacher.resolve()
    limit = [f"train.max_steps={args.steps}"] if args.steps else []
    limit += _shorter_schedule(args.epochs)
    teacher_numbers = {"train_s": teacher_train_s, **_probe(teacher, args.probe_epochs)}
    print("teacher", json.dumps(teacher_numbers), flush=True)
    runs: dict[str, list[dict]] = {"distilled": [], "scratch": []}
    for seed in args.seeds:
        common = [f"train.seed={seed}", *limit]
        for name, extra in (
            ("distilled", [f"distill.teacher={teacher}"]),
            ("scratch", ["distill.teacher=null"]),
        ):
            run_dir = out / f"{name}-seed{seed}"
            ckpt, seconds, pflops = _train(
                "demo-distill", [*common, *extra, f"train.output_dir={run_dir}"]
            )
            row = {"seed": seed, "train_s": round(seconds, 1), "tflops": round(pflops * 1e3, 3)}
            row.update(_probe(ckpt, args.probe_epochs))
            runs[name].append(row)
            print(name, json.dumps(row), flush=True)
            _report(args, teacher, teacher_numbers, limit, runs)  # after every run: partial


def _report(args, teacher: Path, teacher_numbers: dict, limit: list[str], runs: dict) -> None:
    """The result so far (means over the seeds done), printed and written to ``--json``."""
    runs = {name: rows for name, rows in runs.items() if rows}
    summary = {
        name: {
            k: round(statistics.mean(r[k] for r in rows), 2)
            for k in ("knn10", "knn20", "linear", "heldout", "train_s", "tflops")
        }
        for name, rows in runs.items()
    }
    distill_cfg = resolve_distill(
        resolve_config("demo-distill", None, [f"distill.teacher={teacher}", *limit])
    )
    result = {
        "benchmark": "distill",
        "what": "demo-distill student distilled from the frozen demo-dinov2 teacher vs the same "
        "student from scratch (demo-distill with distill.teacher=null), same steps; "
        "kNN / linear probe top-1 % on the demo val split",
        "teacher": {"checkpoint": str(teacher), **teacher_numbers},
        "student": {
            "embed_dim": distill_cfg.model.embed_dim,
            "depth": distill_cfg.model.depth,
            "patch_size": distill_cfg.model.patch_size,
            "steps": min(distill_cfg.total_iterations, args.steps or distill_cfg.total_iterations),
            "schedule_overrides": limit,
        },
        "runs": runs,
        "mean": summary,
        "delta_distilled_minus_scratch": {
            k: round(summary["distilled"][k] - summary["scratch"][k], 2)
            for k in ("knn10", "knn20", "linear", "heldout")
        }
        if len(summary) == 2
        else None,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        write_text(args.json, text + "\n")


if __name__ == "__main__":
    main()
