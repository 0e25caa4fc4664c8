"""What every benchmark script shares: where it ran, how it times, how it saves its record.

Each script measures one thing and prints one JSON record (one line); ``--out FILE`` also saves
it (under ``benchmarks/results/`` for the committed figures). The record carries ``machine()``:
a figure without the CPU, core count, torch version and the load on a shared machine cannot be
compared with another one. Ratios are measured side by side in one run; absolute GPU figures
come only from a GPU run.

Scripts run as ``python benchmarks/NAME.py`` put the checkout first on ``sys.path`` and import
this module as ``benchmarks.harness`` (the tests import the scripts the same way).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastdino_cli.fileio import write_text


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Any = None) -> dict[str, Any]:
    """Where the record was measured: CPU, cores, threads, versions, load, date (+ the GPU).

    ``load_avg_1m`` is read when the record is made: on this shared machine a high load explains
    a slow figure. torch is imported only here, so scripts that never need it stay light.
    """
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return info
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if device is not None:
        info["device"] = torch.device(device).type
        if info["device"] == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock ms of ``repeats`` calls (the median resists a noisy neighbour)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def emit(record: dict[str, Any], out: str | Path | None = None) -> str:
    """Print ``record`` as one JSON line; with ``out`` also save it there (atomically)."""
    line = json.dumps(record)
    print(line)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, line + "\n")
    return line
