"""Copy a finished demo's numbers and figures into the README and docs/report.md.

Usage: python docs/demo/update_readme.py [DEMO_OUT] [--note TEXT]

Reads DEMO_OUT/report/report.md (default demo_out), DEMO_OUT/demo_timings.json and the report's
figures, copies the figures to docs/demo/, then rewrites

- README.md between ``<!-- demo-excerpt:start -->`` and ``<!-- demo-excerpt:end -->``: ONE
  compact results table (cost, probes, robustness; relative changes against the baseline in
  brackets), with the machine and the date in a footnote;
- docs/report.md between ``<!-- demo-tables:start -->`` and ``<!-- demo-tables:end -->``: the
  report's Runs, Probes and Robustness tables verbatim and its figures, each with a caption,

so both pages show exactly what a real run wrote. ``--note`` adds a sentence to the footnote
(e.g. how loaded the machine was).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "demo"
README_MARKERS = ("<!-- demo-excerpt:start -->", "<!-- demo-excerpt:end -->")
REPORT_MARKERS = ("<!-- demo-tables:start -->", "<!-- demo-tables:end -->")
FIGURES = {  # file -> (alt text, caption on docs/report.md)
    "training_fastdinov2.png": (
        "training curves of the curriculum run",
        "Training curves of the curriculum run: losses, learning rate and crop size per step; "
        "the dashed line is the stage switch.",
    ),
    "corruption_bars.png": (
        "top-1 per corruption",
        "Top-1 per corruption of both runs (mean over the severities run).",
    ),
    "fourier_side_by_side.png": (
        "Fourier heatmaps, one colour scale",
        "Fourier error-sensitivity heatmaps of both runs on one colour scale: top-1 error per "
        "perturbation frequency, zero frequency at the centre.",
    ),
    "gradcam_grid.png": (
        "Grad-CAM, one column per run",
        "Grad-CAM of each probe's predicted class, one val image per class, one column per run.",
    ),
}
# compact README table: (header, report section, column, relative-change column or None)
COMPACT = [
    ("steps", "Runs", "steps", None),
    ("FLOPs", "Runs", "FLOPs", "FLOPs vs dinov2"),
    ("training time", "Runs", "wall-clock", "time vs dinov2"),
    ("kNN top-1 %", "Probes", "kNN k=20", "kNN vs dinov2"),
    ("linear top-1 %", "Probes", "linear", "linear vs dinov2"),
    ("corrupted top-1 % (19 corruptions)", "Robustness", "mean 19", "mean 19 vs dinov2"),
]


def section_table(md: str, heading: str) -> str:
    """The first markdown table under the ``## heading...`` line."""
    block = md.split(f"\n## {heading}", 1)[1]
    lines = block.splitlines()[1:]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def table_rows(table: str) -> dict[str, dict[str, str]]:
    """A markdown table as {first cell: {header: cell}}."""
    lines = [ln.strip().strip("|").split("|") for ln in table.splitlines()]
    header = [h.strip() for h in lines[0]]
    return {
        cells[0].strip(): dict(zip(header, (c.strip() for c in cells), strict=False))
        for cells in lines[2:]
    }


def compact_table(md: str) -> str:
    """One row per run: cost, probes and robustness, relative changes in brackets."""
    tables = {s: table_rows(section_table(md, s)) for s in ("Runs", "Probes", "Robustness")}
    runs = list(tables["Runs"])
    out = ["| run | " + " | ".join(h for h, *_ in COMPACT) + " |"]
    out.append("|---" * (len(COMPACT) + 1) + "|")
    for i, run in enumerate(runs):
        preset = tables["Runs"][run].get("preset", "")
        cells = [f"{run} (`{preset}`)" if preset else run]
        for _, section, column, relative in COMPACT:
            row = tables[section].get(run, {})
            value = row.get(column, "-")
            if i > 0 and relative and row.get(relative):
                value += f" ({row[relative]})"
            cells.append(value)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def readme_excerpt(md: str, timings: dict, note: str = "") -> str:
    """What goes between the README markers."""
    minutes = timings["seconds_all_steps"] / 60
    scale = timings.get("steps_scale", 1.0)
    command = "fastdino demo" + (f" --steps-scale {scale:g}" if scale != 1.0 else "")
    command += " --full" if timings.get("full") else ""
    footnote = (
        f"[^demo]: `{command}` on {timings['date'][:10]}, {timings['cpu_count']} CPU cores, "
        f"{minutes:.0f} min wall-clock for every step"
        + (f"; {note}" if note else "")
        + ". One seed of a 0.8M-parameter ViT on 480 images (one val image is 0.6 points): the "
        "accuracy gaps are indicative, not significant."
    )
    return "\n".join(
        [
            "What `make demo` measured[^demo] (relative change against the DINOv2 baseline in "
            "brackets; full tables, figures and how to read them in "
            "[docs/report.md](docs/report.md#what-the-demo-measured)):",
            "",
            compact_table(md),
            "",
            footnote,
        ]
    )


def report_tables(md: str, timings: dict, note: str = "") -> str:
    """What goes between the docs/report.md markers."""
    minutes = timings["seconds_all_steps"] / 60
    figures = [f"![{alt}](demo/{name})\n\n*{cap}*" for name, (alt, cap) in FIGURES.items()]
    return "\n".join(
        [
            "Excerpt of `demo_out/report/report.md`; relative changes against the DINOv2 "
            f"baseline (run on {timings['date'][:10]}, {timings['cpu_count']} CPU cores, "
            f"{minutes:.0f} min wall-clock{'; ' + note if note else ''}).",
            "",
            section_table(md, "Runs"),
            "",
            section_table(md, "Probes"),
            "",
            section_table(md, "Robustness"),
            "",
            "\n\n".join(figures),
        ]
    )


def replace_between(path: Path, markers: tuple[str, str], body: str) -> None:
    start, end = markers
    text = path.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {start} ... {end} markers")
    path.write_text(pattern.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", nargs="?", default=str(ROOT / "demo_out"))
    ap.add_argument("--note", default="", help="Extra sentence for the footnote (machine load).")
    args = ap.parse_args()
    out = Path(args.demo_out)
    report = out / "report"
    md = (report / "report.md").read_text()
    timings = json.loads((out / "demo_timings.json").read_text())
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        shutil.copyfile(report / "figures" / name, DOCS / name)
    replace_between(ROOT / "README.md", README_MARKERS, readme_excerpt(md, timings, args.note))
    replace_between(
        ROOT / "docs" / "report.md", REPORT_MARKERS, report_tables(md, timings, args.note)
    )
    print(f"README and docs/report.md updated from {report / 'report.md'}")


if __name__ == "__main__":
    main()
