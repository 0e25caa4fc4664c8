"""``build_report``: one markdown report (plus CSV tables and figures) comparing run directories.

The library twin of ``fastdino report``. It reads what ``pretrain``, ``probe``,
``corrupt-eval``, ``fourier-heatmap`` and ``gradcam`` wrote into each run directory (layout in
``report.read``), and writes into ``out``::

    out/report.md          the tables and figures, relative changes against the FIRST run
    out/runs.csv           preset, steps, wall-clock, images/s, GFLOPs/image, PFLOPs
    out/probe.csv          kNN top-1 per k, linear top-1, random-init baseline
    out/robustness.csv     clean, per-group and mean corrupted top-1
    out/corruptions.csv    top-1 per corruption and run (mean over the severities run)
    out/figures/*.png      training curves, corruption bars, Fourier heatmaps, Grad-CAM grid

Runs that differ only in ``train.seed`` are one recipe (``report.recipes``). When a recipe has
more than one run, the report adds each metric's mean, std and 95% bootstrap interval per recipe
and each recipe's difference to the baseline (the first run's recipe), with error bars::

    out/run_metrics.csv          every metric per run, with its recipe and seed
    out/recipes.csv              per recipe and metric: n, mean, std, ci_low, ci_high, seeds
    out/differences.csv          per recipe and metric: diff to baseline, interval, paired, n
    out/corruption_intervals.csv per recipe and corruption: mean top-1 over seeds, interval
    out/figures/recipes.png, differences.png, corruption_intervals.png

A section with nothing to show names the command that fills it. Nothing is computed unless
``run_missing=True``, which first runs the missing evaluations (``report.steps``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.outputs import check_output_dir
from fastdino_cli.fileio import atomic_write, write_text
from fastdino_cli.report.figures import draw_recipe_figures, draw_report_figures
from fastdino_cli.report.markdown import fmt, fmt_flops, fmt_rel, md_table
from fastdino_cli.report.read import RunData, read_run
from fastdino_cli.report.recipe_markdown import one_seed_note, recipe_sections
from fastdino_cli.report.recipe_tables import (
    corruption_intervals,
    difference_table,
    per_run_metrics,
    recipe_table,
)
from fastdino_cli.report.recipes import Recipe, group_recipes, has_seeds
from fastdino_cli.report.steps import EvalSettings, commands, evaluation_steps
from fastdino_cli.report.tables import (
    GROUP_NAMES,
    KNN_K,
    corruption_wide,
    gradcam_agreement,
    probe_table,
    robustness_table,
    runs_table,
)
from fastdino_cli.rundir import FINAL

SECTIONS = ("Runs", "Probes", "Robustness", "Training curves", "Fourier", "Grad-CAM")


@dataclass
class Report:
    """What ``build_report`` wrote, and which sections stayed empty for which run."""

    path: Path
    runs: list[RunData]
    tables: dict[str, pd.DataFrame]
    figures: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    """Section -> run labels without data for it."""
    markdown: str = ""
    recipes: list[Recipe] = field(default_factory=list)
    """The runs grouped by recipe (seed excluded); the first is the baseline."""

    @property
    def has_seeds(self) -> bool:
        """Whether some recipe has several runs (the report shows intervals)."""
        return has_seeds(self.recipes)


def _labels(run_dirs: list[Path]) -> list[str]:
    """Run folder names, with the parent folder added where two names collide."""
    names = [Path(p).resolve().name for p in run_dirs]
    return [
        f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n
        for p, n in zip(run_dirs, names, strict=True)
    ]


def build_report(
    run_dirs: list[Path],
    out: Path,
    run_missing: bool = False,
    *,
    settings: EvalSettings | None = None,
    timings: dict | None = None,
) -> Report:
    """Read the run directories, write report.md, the CSV tables and the figures into ``out``.

    Args:
        run_dirs: run directories; the first one is the reference of every relative change.
        out: output folder (created).
        run_missing: first run the evaluations whose outputs are missing (``report.steps``).
        settings: how those evaluations run (data folders, corruptions, sizes).
        timings: optional pipeline timings (``demo_timings.json`` of ``run_demo``), shown as
            a last section.
    """
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    run_dirs = [Path(p) for p in run_dirs]
    out = check_output_dir(out)
    labels = _labels(run_dirs)
    settings = settings or EvalSettings()
    if run_missing:
        for run_dir, label in zip(run_dirs, labels, strict=True):
            if not (run_dir / FINAL).is_file():
                raise ConfigError(
                    f"{run_dir} has no {FINAL}; train it first: fastdino pretrain --out {run_dir}"
                )
            for step in evaluation_steps(run_dir, label, settings):
                if not step.done():
                    print(f"running: {step.command}", flush=True)
                    step.run()
    runs = [read_run(p, lab) for p, lab in zip(run_dirs, labels, strict=True)]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    report = Report(out / "report.md", runs, tables={})
    report.tables = {
        "runs": runs_table(runs),
        "probe": probe_table(runs),
        "robustness": robustness_table(runs),
        "corruptions": corruption_wide(runs),
    }
    report.recipes = group_recipes(runs)
    if report.has_seeds:
        frame = per_run_metrics(report.recipes, report.tables)
        report.tables |= {
            "run_metrics": frame,
            "recipes": recipe_table(report.recipes, frame),
            "differences": difference_table(report.recipes, frame),
            "corruption_intervals": corruption_intervals(report.recipes),
        }
    for name, table in report.tables.items():
        atomic_write(out / f"{name}.csv", lambda f, t=table: t.to_csv(f, index=False), text=True)
    report.markdown = _render(report, out, settings, timings)
    write_text(report.path, report.markdown)
    return report


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _missing_lines(report: Report, section: str, key: str, runs, settings) -> list[str]:
    lines = []
    for run in runs:
        report.missing.setdefault(section, []).append(run.label)
        cmd = commands(run.run_dir, settings)[key]
        lines.append(f"- `{run.label}`: not measured; run `{cmd}` to fill this.")
    return lines


def _runs_section(report: Report, settings) -> list[str]:
    t = report.tables["runs"]
    first = report.runs[0].label
    header = ["run", "preset", "steps", "wall-clock", "images/s", "GFLOPs/img", "FLOPs"]
    header += [f"time vs {first}", f"FLOPs vs {first}"]
    rows = []
    for r in t.itertuples():
        steps = "-" if pd.isna(r.steps) else f"{int(r.steps)}/{int(r.total_steps)}"
        wall = "-" if pd.isna(r.wall_clock_s) else f"{r.wall_clock_s / 60:.1f} min"
        rows.append(
            [r.run, r.preset, steps, wall, fmt(r.images_per_s), fmt(r.gflops_per_image, 3),
             fmt_flops(r.pflops), fmt_rel(r.wall_clock_s_rel), fmt_rel(r.pflops_rel)]
        )  # fmt: skip
    lines = ["## Runs", "", md_table(header, rows), ""]
    lines.append(
        "Wall-clock is the sum of the logged training windows (restarts not counted); FLOPs "
        "come from `fastdino pretrain --plan` (`train/plan.py`) for the steps done."
    )
    no_train = [r for r in report.runs if r.metrics is None]
    if no_train:
        lines += ["", *_missing_lines(report, "Runs", "pretrain", no_train, settings)]
    return lines


def _probe_section(report: Report, settings) -> list[str]:
    t = report.tables["probe"]
    first = report.runs[0].label
    knn = f"knn{KNN_K}" if f"knn{KNN_K}" in t else next((c for c in t if c.startswith("knn")), None)
    k = knn[3:] if knn else str(KNN_K)
    header = [
        "run", f"kNN k={k}", "linear", f"kNN vs {first}", f"linear vs {first}",
        f"random init kNN k={k}", "random init linear",
    ]  # fmt: skip
    rows = []
    for _, r in t.iterrows():
        rows.append(
            [r["run"], fmt(r.get(knn)), fmt(r.get("linear")), fmt_rel(r.get(f"{knn}_rel")),
             fmt_rel(r.get("linear_rel")), fmt(r.get(f"random_{knn}")),
             fmt(r.get("random_linear"))]
        )  # fmt: skip
    lines = ["## Probes (top-1 %, frozen teacher features)", "", md_table(header, rows), ""]
    lines.append(
        "Linear head chosen on a split held out from train, reported once on val; every k "
        "is in `probe.csv`. Random init: the same architecture untrained."
    )
    missing = [r for r in report.runs if not r.probe]
    if missing:
        lines += ["", *_missing_lines(report, "Probes", "probe", missing, settings)]
    return lines


def _robustness_section(report: Report, settings, figures: dict[str, Path]) -> list[str]:
    t = report.tables["robustness"]
    first = report.runs[0].label
    cols = ["clean", *GROUP_NAMES, "mean_15", "mean_19"]
    header = ["run", "clean", *GROUP_NAMES, "mean 15", "mean 19", f"mean 19 vs {first}"]
    mce = [c for c in ("mCE", "relative_mCE") if c in t and t[c].notna().any()]
    header += [c.replace("_", " ") for c in mce]
    rows = [
        [r["run"], *[fmt(r[c]) for c in cols], fmt_rel(r["mean_19_rel"]), *[fmt(r[c]) for c in mce]]
        for _, r in t.iterrows()
    ]
    lines = ["## Robustness (ImageNet-C corruptions, top-1 %)", "", md_table(header, rows), ""]
    metas = [r.corrupt_meta for r in report.runs if r.corrupt_meta]
    if metas:
        m = metas[0]
        lines.append(
            f"{len(m.get('corruptions', []))} corruptions at severities "
            f"{', '.join(str(s) for s in m.get('severities', []))} of `{m.get('source')}`, "
            "corrupted on the fly; group columns average the corruptions of the group."
        )
    if "corruption_intervals" in figures:
        lines += [
            "",
            "![accuracy per corruption, mean over seeds with 95% bootstrap intervals]"
            f"({figures['corruption_intervals']})",
        ]
    elif "corruption_bars" in figures:
        lines += ["", f"![accuracy per corruption]({figures['corruption_bars']})"]
    missing = [r for r in report.runs if r.corrupt_summary is None]
    if missing:
        lines += ["", *_missing_lines(report, "Robustness", "corrupt", missing, settings)]
    return lines


def _figure_sections(report: Report, settings, figures: dict[str, Path]) -> list[str]:
    lines = ["## Training curves", ""]
    for run in report.runs:
        if f"training:{run.label}" in figures:
            lines.append(f"![training curves of {run.label}]({figures[f'training:{run.label}']})")
    no_train = [r for r in report.runs if r.metrics is None]
    lines += _missing_lines(report, "Training curves", "pretrain", no_train, settings)
    lines += ["", "## Fourier heatmaps (top-1 error per frequency, one colour scale)", ""]
    if "fourier" in figures:
        lines.append(f"![Fourier heatmaps]({figures['fourier']})")
        rows = [
            [r.label, fmt(100 * r.fourier["clean_error"]), fmt(100 * r.fourier["mean_error"])]
            for r in report.runs
            if r.fourier
        ]
        lines += ["", md_table(["run", "clean error %", "mean error over frequencies %"], rows)]
    no_maps = [r for r in report.runs if r.fourier is None]
    lines += _missing_lines(report, "Fourier", "fourier", no_maps, settings)
    lines += ["", "## Grad-CAM (probe's predicted class, one column per run)", ""]
    if "gradcam" in figures:
        lines.append(f"![Grad-CAM grid]({figures['gradcam']})")
        correct = gradcam_agreement(report.runs)
        if correct:
            shown = ", ".join(f"`{k}` {v:.0f}%" for k, v in correct.items())
            lines += ["", f"Images classified correctly in the grid: {shown}."]
    no_cam = [r for r in report.runs if r.gradcam is None]
    lines += _missing_lines(report, "Grad-CAM", "gradcam", no_cam, settings)
    return lines


def _timings_section(timings: dict) -> list[str]:
    steps = timings.get("steps", {})
    rows = []
    for name, t in steps.items():
        unknown = t.get("status") == "reused" and not t.get("seconds")
        seconds = "- (ran in an earlier call)" if unknown else fmt(t.get("seconds"), 1)
        rows.append([name, seconds, fmt(t.get("cpu_s"), 1), t.get("status", "")])
    total = timings.get("seconds_all_steps")
    header = ["step", "wall-clock s", "CPU s", "this call"]
    lines = ["## Pipeline wall-clock", "", md_table(header, rows), ""]
    lines.append(
        f"All steps: {fmt(total / 60 if total else None, 1)} min on {timings.get('cpu_count')} "
        f"CPU(s) of `{timings.get('host')}` ({timings.get('date')}); a reused step shows the "
        "time it took when it ran."
    )
    return lines


def _render(report: Report, out: Path, settings: EvalSettings, timings: dict | None) -> str:
    figures = draw_report_figures(report.runs, out, per_run_bars=not report.has_seeds)
    if report.has_seeds:
        t = report.tables
        figures |= draw_recipe_figures(
            t["run_metrics"], t["recipes"], t["differences"], t["corruption_intervals"], out
        )
    report.figures = {k: out / v for k, v in figures.items()}
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# fastdino report",
        "",
        f"{len(report.runs)} run(s), written {date}. Relative changes are "
        f"`(x - x_{report.runs[0].label}) / x_{report.runs[0].label}` against the first run.",
        "",
        *[f"- `{r.label}`: `{r.run_dir}` (preset `{r.preset}`)" for r in report.runs],
        "",
    ]
    if report.has_seeds:
        lines += recipe_sections(report.recipes, report.tables, figures) + [""]
    elif len(report.runs) > 1:
        lines += one_seed_note()
    lines += _runs_section(report, settings) + [""]
    lines += _probe_section(report, settings) + [""]
    lines += _robustness_section(report, settings, figures) + [""]
    lines += _figure_sections(report, settings, figures)
    if timings:
        lines += ["", *_timings_section(timings)]
    problems = [p for r in report.runs for p in r.problems]
    if problems:
        lines += ["", "## Files that could not be read", "", *[f"- {p}" for p in problems]]
    return "\n".join(lines).rstrip() + "\n"
