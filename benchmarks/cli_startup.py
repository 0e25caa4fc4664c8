"""CPU cost of starting ``fastdino``: help, a quick command and usage errors.

Each case runs ``python -m fastdino_cli ARGS`` in a fresh child process ``--runs`` times (default
5) and records the median user+sys CPU seconds of the child (``os.wait4``), which, unlike wall
time, does not depend on how busy the machine is. The target (issue 17 item 24) is under 0.5 s
for every case with torch installed; ``python -c pass`` is measured beside them as the floor.
Prints ONE JSON line and, with ``--save``, writes it to ``benchmarks/results/cli_startup.json``.

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --runs 9 --save
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import emit, machine  # noqa: E402

TARGET_S = 0.5

CASES: dict[str, list[str]] = {
    "help": ["--help"],
    "presets_list": ["presets", "list"],
    "probe_help": ["probe", "--help"],
    "usage_error": ["probe", "--no-such-option"],
    "config_error": ["presets", "show", "demo", "optim.base_rl=1"],
    "pretrain_config_error": ["pretrain", "--preset", "demo", "optim.base_lr=-1"],
}
"""name -> arguments after ``fastdino``; the last three must exit with code 2."""


def cpu_seconds(argv: list[str]) -> tuple[float, int]:
    """(user + sys CPU seconds, exit code) of one child process running ``argv``."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, proc.returncode


def _env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="100")
    env.pop("FASTDINO_DEBUG", None)
    return env


def measure(args: list[str], runs: int) -> dict:
    """Median, min and max CPU seconds of ``runs`` starts of ``fastdino args``."""
    times, codes = [], set()
    for _ in range(runs):
        t, code = cpu_seconds([sys.executable, "-m", "fastdino_cli", *args])
        times.append(t)
        codes.add(code)
    return {
        "args": args,
        "cpu_s_median": round(statistics.median(times), 3),
        "cpu_s_min": round(min(times), 3),
        "cpu_s_max": round(max(times), 3),
        "exit_codes": sorted(codes),
        "under_target": statistics.median(times) < TARGET_S,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="starts per case (the median is kept)")
    p.add_argument("--cases", nargs="*", choices=list(CASES), help="default: all")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/cli_startup.json")
    a = p.parse_args(argv)
    floor = [cpu_seconds([sys.executable, "-c", "pass"])[0] for _ in range(a.runs)]
    result = {
        "benchmark": "cli_startup",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": machine(),
        "runs": a.runs,
        "target_cpu_s": TARGET_S,
        "python_floor_cpu_s": round(statistics.median(floor), 3),
        "cases": {name: measure(CASES[name], a.runs) for name in (a.cases or CASES)},
    }
    result["all_under_target"] = all(c["under_target"] for c in result["cases"].values())
    emit(result, ROOT / "benchmarks" / "results" / "cli_startup.json" if a.save else None)
    return result


if __name__ == "__main__":
    main()
