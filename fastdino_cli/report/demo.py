"""``run_demo``: the paper's comparison at laptop scale, end to end, resumable step by step.

What ``fastdino demo`` (and ``make demo``) runs, in order::

    demo data            OUT/data/{train,val}/<class>/*.png       (data.demo)
    pretrain x 2         OUT/runs/dinov2 (preset demo-dinov2),    (the baseline first: it is the
                         OUT/runs/fastdinov2 (preset demo)         reference of every change)
      with --seeds N     OUT/runs/dinov2-seed1, fastdinov2-seed1, ... (train.seed=1 .. N-1)
    probe x 2            RUN/probe.json + the head in RUN/final.pt (kNN, linear, random init)
    corrupt-eval x 2     RUN/corrupt-eval/                        (19 corruptions; severities
                                                                    1,3,5, or 1-5 with full=True)
    fourier-heatmap x 2  RUN/fourier/final/                       (64 px, 21x21 window)
    gradcam x 2          RUN/gradcam/                             (one image per class)
    report               OUT/report/report.md                     (report.build_report)

Every step checks its outputs first and is skipped when they are there (a finished pretrain,
an evaluation newer than the checkpoint with the same settings), so an interrupted demo
continues where it stopped; pretraining itself resumes from ``checkpoint.pt``. Each step's own
output goes to ``OUT/logs/<step>.log``; the terminal shows one progress display.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdino_cli import console
from fastdino_cli.fileio import write_text
from fastdino_cli.report.steps import EvalSettings, Step, evaluation_steps

RUNS = {"dinov2": "demo-dinov2", "fastdinov2": "demo"}
"""Recipe (the seed-0 run folder) -> preset; the baseline first: the report's relative changes
and differences are against it. Another recipe is one more entry here."""
DEFAULT_SEVERITIES = "1,3,5"
FOURIER_WINDOW = 21


@dataclass(frozen=True)
class DemoRun:
    """One pretraining run of the demo: a recipe at one seed."""

    recipe: str
    preset: str
    seed: int

    @property
    def name(self) -> str:
        """The run folder: the recipe's name for seed 0 (the paths of a one-seed demo), else
        ``<recipe>-seed<N>``."""
        return self.recipe if self.seed == 0 else f"{self.recipe}-seed{self.seed}"

    @property
    def overrides(self) -> list[str]:
        """``train.seed=N`` for seeds after the first (seed 0 is every preset's default)."""
        return [] if self.seed == 0 else [f"train.seed={self.seed}"]

    @property
    def step_name(self) -> str:
        return f"pretrain {self.preset}" + ("" if self.seed == 0 else f" seed {self.seed}")

    def run_dir(self, out: Path) -> Path:
        return Path(out) / "runs" / self.name


def plan_runs(seeds: int = 1, recipes: Mapping[str, str] = RUNS) -> list[DemoRun]:
    """Every run of the demo, seed by seed (both recipes of seed 0 first, so an interrupted
    demo has a complete comparison soonest)."""
    from fastdino_cli.errors import ConfigError

    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be at least 1")
    return [DemoRun(r, p, s) for s in range(seeds) for r, p in recipes.items()]


def report_order(runs: list[DemoRun], recipes: Mapping[str, str] = RUNS) -> list[DemoRun]:
    """The runs recipe by recipe (the baseline's first), seeds in order: the report's order."""
    order = list(recipes)
    return sorted(runs, key=lambda r: (order.index(r.recipe), r.seed))


def demo_settings(data: Path, full: bool = False) -> EvalSettings:
    """The evaluation settings of the demo (all severities with ``full``)."""
    return EvalSettings(
        train=data / "train",
        val=data / "val",
        corruptions="all",
        severities="1-5" if full else DEFAULT_SEVERITIES,
        fourier_window=FOURIER_WINDOW,
        fourier_images_per_class=5,
        gradcam_per_class=1,
        workers=min(2, os.cpu_count() or 1),
        device="auto",
    )


def _last_metrics(run_dir: Path) -> dict[str, Any]:
    from fastdino_cli import rundir as rd

    return rd.last_metrics(run_dir / rd.METRICS)


def pretrain_step(
    preset: str, run_dir: Path, overrides: Sequence[str], name: str | None = None
) -> Step:
    """Pretrain ``preset`` into ``run_dir``; done when final.pt holds the whole schedule."""
    from fastdino_cli.config import resolve_config

    cfg = resolve_config(preset, None, [*overrides, f"train.output_dir={run_dir}"])
    total = cfg.total_iterations

    def done() -> bool:
        from fastdino_cli import rundir as rd

        last = _last_metrics(run_dir)
        finished = (run_dir / rd.FINAL).is_file() and int(last.get("step", -1)) + 1 >= total
        if finished:  # never reuse a run trained with another config (e.g. an older preset)
            from fastdino_cli.config import restate_stored_run

            old = rd.read_stored_config(run_dir) or {}  # the demo trains in one process
            old = restate_stored_run(old, 1, cfg, 1)  # per-GPU keys of older runs
            rd.check_resume_config(run_dir, old, cfg.to_dict(), force=False)
        return finished

    def run() -> Any:
        from fastdino_cli.errors import FastdinoError
        from fastdino_cli.train.loop import pretrain

        result = pretrain(cfg, progress=False)
        if result.stopped == "sigint":  # Ctrl-C: checkpointed; the demo resumes it next time
            raise KeyboardInterrupt
        if result.stopped == "sigterm":
            raise FastdinoError(
                f"{run_dir} stopped by SIGTERM at step {result.steps_done}; run the demo "
                "again to resume it"
            )
        return result

    args = " ".join(overrides)
    command = f"fastdino pretrain --preset {preset} {args}".strip()
    return Step(name or f"pretrain {preset}", done, run, command)


def pretrain_detail(run_dir: Path, total: int) -> Callable[[], str]:
    """What the progress display shows while a run trains: its step, stage and loss."""

    def detail() -> str:
        last = _last_metrics(run_dir)
        if not last:
            return "starting"
        fields = console.progress_fields(
            stage=last.get("stage"),
            size=last.get("global_crops_size"),
            loss=float(last.get("loss", float("nan"))),
            images_per_s=last.get("images_per_s"),
        )
        return console.progress_line("step", int(last["step"]) + 1, total, fields)

    return detail


class Progress:
    """One display for the whole demo: steps done / total and the current step's name.

    The house bar (``console.Bar``) on a terminal, on the real stdout because each step's
    output is redirected to its log file; one plain ``demo N/TOTAL ...`` line per step otherwise.
    """

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = sys.stdout
        self.rich = self.stream.isatty() if enabled is None else enabled
        self._bar = console.Bar("demo", total, stream=self.stream, enabled=self.rich)

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def start(self, name: str) -> None:
        if self.rich:
            self._bar.update(info=name)
        else:
            self._bar.line(console.progress_line("demo", self.done + 1, self.total, f"{name} ..."))

    def detail(self, name: str, text: str) -> None:
        if self.rich:
            self._bar.update(info=f"{name}: {text}")

    def finish(self, name: str, seconds: float, status: str) -> None:
        self.done += 1
        info = f"{name}: {status} ({seconds:.1f} s)"
        self._bar.line(console.progress_line("demo", self.done, self.total, info))
        self._bar.update(completed=self.done)

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _previous_timings(path: Path) -> dict[str, Any]:
    """Step timings of an earlier call: a reused step keeps the time it took when it ran."""
    try:
        return json.loads(path.read_text()).get("steps", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def _timings_record(
    timings: dict[str, Any], full: bool, steps_scale: float, seconds: float
) -> dict[str, Any]:
    """``demo_timings.json``: per step wall-clock and CPU seconds, where and when."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "full": full,
        "steps_scale": steps_scale,
        "steps": timings,
        "total_seconds_this_call": round(seconds, 1),
        "seconds_all_steps": round(sum(t["seconds"] for t in timings.values()), 1),
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def _run_step(step: Step, logs: Path, progress: Progress, detail=None) -> dict[str, Any]:
    """Run one step unless done, output to its log, the display updated meanwhile."""
    progress.start(step.name)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    if step.done():
        progress.finish(step.name, time.perf_counter() - t0, "reused")
        return {"status": "reused", "seconds": 0.0}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{_slug(step.name)}.log"
    stop = threading.Event()
    poller = None
    if detail is not None and progress.rich:

        def poll() -> None:
            while not stop.wait(1.0):
                with contextlib.suppress(Exception):
                    progress.detail(step.name, detail())

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
    try:
        with (
            open(log, "w") as f,
            contextlib.redirect_stdout(f),
            contextlib.redirect_stderr(f),
        ):
            print(f"$ {step.command}", flush=True)
            step.run()
    except BaseException:
        console.note(f"demo step '{step.name}' failed; its log is {log}")
        raise
    finally:
        stop.set()
        if poller is not None:
            poller.join()
    seconds = time.perf_counter() - t0
    progress.finish(step.name, seconds, "done")
    return {"status": "ran", "seconds": round(seconds, 2), "cpu_s": round(_cpu_seconds() - cpu0, 2)}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (data-loader workers included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_demo(
    out: str | Path = "demo_out",
    full: bool = False,
    steps_scale: float = 1.0,
    *,
    overrides: Sequence[str] = (),
    data_size: int = 64,
    train_per_class: int = 48,
    val_per_class: int = 16,
    settings: EvalSettings | None = None,
    progress: bool | None = None,
    seeds: int = 1,
) -> Path:
    """Run (or finish) the whole demo in ``out``; returns the path of ``report.md``.

    Args:
        out: folder for the data, the runs, the logs and the report.
        full: corrupt-eval at all 5 severities (default 1, 3, 5).
        steps_scale: multiplies ``train.epoch_length`` of both presets (1.0: 500 steps each).
        overrides: extra ``key=value`` config overrides for both pretraining runs.
        data_size, train_per_class, val_per_class: the demo dataset's size.
        settings: evaluation settings (default ``demo_settings``).
        progress: rich display (None: when stdout is a terminal).
        seeds: runs of each recipe (``train.seed`` 0 .. seeds-1); with more than one the
            report shows mean, std and 95% bootstrap intervals per recipe. Finished runs are
            reused, so raising ``seeds`` later trains only the new seeds.
    """
    from fastdino_cli.config import resolve_config
    from fastdino_cli.data.demo import build_demo_dataset, check_replaceable
    from fastdino_cli.errors import ConfigError
    from fastdino_cli.report.build import build_report

    if steps_scale <= 0:
        raise ConfigError(f"steps_scale {steps_scale} must be positive")
    out = Path(os.path.abspath(Path(out).expanduser()))  # runs store absolute paths
    data = out / "data"
    check_replaceable(data)  # a folder of the user's is refused before anything runs
    settings = settings or demo_settings(data, full)
    runs = plan_runs(seeds)
    if seeds > 1 and any(o.split("=", 1)[0].strip() == "train.seed" for o in overrides):
        raise ConfigError("--seeds sets train.seed of each run; leave train.seed out of overrides")
    items: list[tuple[Step, Callable[[], str] | None]] = []

    def build_data() -> Any:
        return build_demo_dataset(
            data, size=data_size, train_per_class=train_per_class, val_per_class=val_per_class
        )

    items.append((Step("demo data", lambda: False, build_data, f"fastdino data demo {data}"), None))
    for run in runs:
        run_dir = run.run_dir(out)
        length = max(1, round(resolve_config(run.preset).iterations_per_epoch * steps_scale))
        ovr = [f"data.train={data / 'train'}", f"train.epoch_length={length}"]
        ovr += [*overrides, *run.overrides]
        step = pretrain_step(run.preset, run_dir, ovr, name=run.step_name)
        total = resolve_config(run.preset, None, ovr).total_iterations
        items.append((step, pretrain_detail(run_dir, total)))
    per_run = [evaluation_steps(r.run_dir(out), r.name, settings) for r in runs]
    for kind in range(len(per_run[0])):
        items += [(steps[kind], None) for steps in per_run]
    report_dir = out / "report"
    timings: dict[str, Any] = {}
    before = _previous_timings(out / "demo_timings.json")
    t_start = time.perf_counter()
    with Progress(len(items) + 1, progress) as bar:
        for step, detail in items:
            timings[step.name] = _run_step(step, out / "logs", bar, detail)
            earlier = before.get(step.name, {})
            if timings[step.name]["status"] == "reused" and earlier.get("seconds"):
                timings[step.name] = {**earlier, "status": "reused"}
            # written after every step, so an interrupted demo keeps what it measured
            record = _timings_record(timings, full, steps_scale, time.perf_counter() - t_start)
            write_text(out / "demo_timings.json", json.dumps(record, indent=2) + "\n")
        bar.start("report")
        t0 = time.perf_counter()
        run_dirs = [r.run_dir(out) for r in report_order(runs)]
        report = build_report(run_dirs, report_dir, settings=settings, timings=record)
        bar.finish("report", time.perf_counter() - t0, "done")
    return report.path
