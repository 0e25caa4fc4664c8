"""The report's sections on recipes over seeds: intervals per recipe, differences to the baseline.

Shown when some recipe has more than one run (``report.recipes``); with one run per recipe the
report says instead that one seed cannot separate recipes (``one_seed_note``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fastdino_cli.report.intervals import LEVEL, N_BOOT
from fastdino_cli.report.markdown import fmt_flops, fmt_interval, md_table
from fastdino_cli.report.recipes import Recipe, separating_keys

MORE_SEEDS = (
    "train more seeds of each recipe (`fastdino pretrain ... train.seed=1`, or "
    "`fastdino demo --seeds 3`) and report them together"
)


def one_seed_note() -> list[str]:
    return [
        f"One run per recipe: no intervals. One seed of a small run cannot separate two "
        f"recipes (seeds of the same recipe often differ by as much); {MORE_SEEDS}.",
        "",
    ]


def _digits(metric: str) -> int:
    return {"images_per_s": 0, "wall_clock_min": 2}.get(metric, 1)


def _num(x: float, metric: str, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if metric == "pflops":  # FLOPs with an SI prefix, as the Runs table shows them
        sign = ("-" if x < 0 else "+") if signed else ""
        return "0" if x == 0 else sign + fmt_flops(abs(x))
    sign = "+" if signed else ""
    x = round(x, _digits(metric)) + 0.0  # no "-0.0"
    return f"{x:{sign},.{_digits(metric)}f}"


def _interval(low: float, high: float, metric: str, signed: bool = False) -> str:
    if metric == "pflops" and math.isfinite(low) and math.isfinite(high):
        return f"[{_num(low, metric, signed)}, {_num(high, metric, signed)}]"
    return fmt_interval(low, high, _digits(metric), signed)


def _label(part: pd.DataFrame, metric: str) -> str:
    return "training FLOPs" if metric == "pflops" else str(part["label"].iloc[0])


def _recipe_lines(recipes: list[Recipe], runs_t: pd.DataFrame | None) -> list[str]:
    """One line per recipe naming its runs and seeds; an unfinished run is marked (its numbers
    are pooled with finished seeds, which a reader must know)."""
    steps = {}
    if runs_t is not None and {"run", "steps", "total_steps"} <= set(runs_t.columns):
        steps = {r["run"]: (r["steps"], r["total_steps"]) for r in runs_t.to_dict("records")}
    lines = []
    for recipe in recipes:
        parts = []
        for run, seed in zip(recipe.runs, recipe.seeds, strict=True):
            done, total = steps.get(run.label, (math.nan, math.nan))
            unfinished = (
                f", unfinished: {int(done)}/{int(total)} steps"
                if pd.notna(done) and pd.notna(total) and done < total
                else ""
            )
            parts.append(f"`{run.label}` (seed {'-' if seed is None else seed}{unfinished})")
        lines.append(
            f"- `{recipe.name}`: preset `{recipe.preset}`, {len(recipe.runs)} run(s): "
            + ", ".join(parts)
        )
    keys = separating_keys(recipes)
    if keys:
        shown = ", ".join(f"`{k}`" for k in keys[:8])
        more = f" ({len(keys)} in all; see each run's config.yaml)" if len(keys) > 8 else ""
        lines += ["", f"Keys that tell the recipes apart: {shown}{more}."]
    return lines


def recipe_sections(
    recipes: list[Recipe], tables: dict[str, pd.DataFrame], figures: dict[str, Path]
) -> list[str]:
    """``## Recipes over seeds`` and ``## Differences to <baseline>`` (markdown lines)."""
    t = tables["recipes"]
    pct = f"{100 * LEVEL:.0f}%"
    lines = [f"## Recipes over seeds (mean ± std, {pct} bootstrap interval)", ""]
    lines += _recipe_lines(recipes, tables.get("runs")) + [""]
    metrics = list(dict.fromkeys(t["metric"]))
    header = ["metric", *[f"{r.name} (n={len(r.runs)})" for r in recipes]]
    rows = []
    for metric in metrics:
        part = t[t["metric"] == metric].set_index("recipe")
        cells = []
        for recipe in recipes:
            r = part.loc[recipe.name]
            cell = _num(r["mean"], metric)
            if math.isfinite(r["std"]):
                cell += f" ± {_num(r['std'], metric)}"
            if iv := _interval(r["ci_low"], r["ci_high"], metric):
                cell += f" {iv}"
            cells.append(cell + ("" if r["n"] == len(recipe.runs) else f" (n={r['n']})"))
        rows.append([_label(part, metric), *cells])
    lines += [md_table(header, rows), ""]
    lines.append(
        f"Mean and sample standard deviation over the seeds; in brackets the {pct} percentile "
        f"bootstrap interval of the mean ({N_BOOT:,} resamples of the seeds, seeded). With 3-5 "
        "seeds it is narrower than a t-interval: a lower bound on the uncertainty. One value per "
        "recipe has no interval. Per run: `run_metrics.csv`; per recipe: `recipes.csv`."
    )
    if "recipes" in figures:
        lines += ["", f"![metrics per recipe with {pct} intervals]({figures['recipes']})"]
    lines += ["", *_difference_section(recipes, tables.get("differences"), figures)]
    return lines


def _difference_section(
    recipes: list[Recipe], d: pd.DataFrame | None, figures: dict[str, Path]
) -> list[str]:
    if d is None or d.empty:
        return []
    base = recipes[0].name
    others = recipes[1:]
    lines = [f"## Differences to `{base}` ({100 * LEVEL:.0f}% bootstrap interval)", ""]
    header = ["metric", *[f"{r.name} − {base}" for r in others]]
    rows = []
    for metric in dict.fromkeys(d["metric"]):
        part = d[d["metric"] == metric].set_index("recipe")
        cells = []
        for recipe in others:
            r = part.loc[recipe.name]
            cell = _num(r["diff"], metric, signed=True)
            if iv := _interval(r["ci_low"], r["ci_high"], metric, signed=True):
                cell += f" {iv}" + (" *" if r["excludes_zero"] else "")
            if math.isfinite(r["rel_diff"]):
                cell += f" ({100 * r['rel_diff']:+.1f}%)"
            cells.append(cell)
        rows.append([_label(part, metric), *cells])
    lines += [md_table(header, rows), ""]
    for recipe in others:
        part = d[d["recipe"] == recipe.name]
        paired = part[part["paired"].astype(bool)]
        if len(paired) == len(part) and len(part):
            how = f"paired by seed ({int(paired['n'].max())} seeds run by both)"
        elif len(paired):
            how = "paired by seed where two or more seeds match, else unpaired"
        else:
            how = (
                f"unpaired ({int(part['n'].max())} vs {int(part['n_baseline'].max())} runs; "
                "fewer than two seeds in common)"
            )
        lines.append(f"- `{recipe.name}` − `{base}`: {how}.")
    lines += [
        "",
        "`*`: the interval excludes zero. In parentheses: the difference in % "
        f"of `{base}`'s mean. Every row is in `differences.csv`.",
    ]
    if "differences" in figures:
        lines += ["", f"![differences to {base}]({figures['differences']})"]
    return lines
