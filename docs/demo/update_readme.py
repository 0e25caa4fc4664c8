"""Copy a finished demo's report figures into docs/demo/ and its tables into the README.

Usage: python docs/demo/update_readme.py [DEMO_OUT] [--note TEXT]

Reads DEMO_OUT/report/report.md (default demo_out), DEMO_OUT/demo_timings.json and the report's
figures, copies the figures to docs/demo/, and rewrites the README between the
``<!-- demo-excerpt:start -->`` and ``<!-- demo-excerpt:end -->`` markers with the report's
Runs, Probes and Robustness tables verbatim, so the README shows exactly what a real run wrote.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "demo"
START, END = "<!-- demo-excerpt:start -->", "<!-- demo-excerpt:end -->"
FIGURES = {  # file -> (alt text, width in the README)
    "fourier_side_by_side.png": ("Fourier heatmaps (one colour scale)", "49%"),
    "corruption_bars.png": ("top-1 per corruption", "49%"),
    "training_fastdinov2.png": ("training curves of the curriculum run", "66%"),
    "gradcam_grid.png": ("Grad-CAM, one column per run", "22%"),
}


def section_table(md: str, heading: str) -> str:
    """The first markdown table under the ``## heading...`` line."""
    block = md.split(f"\n## {heading}", 1)[1]
    lines = block.splitlines()[1:]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out", nargs="?", default=str(ROOT / "demo_out"))
    ap.add_argument("--note", default="", help="Extra sentence for the caption (machine load).")
    args = ap.parse_args()
    out = Path(args.demo_out)
    report = out / "report"
    md = (report / "report.md").read_text()
    timings = json.loads((out / "demo_timings.json").read_text())
    DOCS.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        shutil.copyfile(report / "figures" / name, DOCS / name)
    minutes = timings["seconds_all_steps"] / 60
    scale = timings.get("steps_scale", 1.0)
    command = "fastdino demo" + (f" --steps-scale {scale:g}" if scale != 1.0 else "")
    command += " --full" if timings.get("full") else ""
    imgs = " ".join(
        f'<img src="docs/demo/{name}" alt="{alt}" width="{width}">'
        for name, (alt, width) in FIGURES.items()
    )
    excerpt = "\n".join(
        [
            f"What `{command}` measured ({timings['date'][:10]}, {minutes:.0f} min wall-clock "
            f"on {timings['cpu_count']} CPU cores{'; ' + args.note if args.note else ''}); "
            "excerpt of `demo_out/report/report.md`, relative changes against the DINOv2 "
            "baseline:",
            "",
            section_table(md, "Runs"),
            "",
            section_table(md, "Probes"),
            "",
            section_table(md, "Robustness"),
            "",
            f"<p>{imgs}</p>",
        ]
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{excerpt}\n{END}", text, count=1))
    print(f"README excerpt updated from {report / 'report.md'}")


if __name__ == "__main__":
    main()
