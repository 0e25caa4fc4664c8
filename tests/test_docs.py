"""The documentation stays true: every relative link in README.md and docs/*.md resolves (files
and heading anchors), no page shows a figure that does not exist, every figure under docs/ is
shown on some page, the README stays a front page whose first commands are the Makefile's, and
the demo's tables can be copied into README.md and docs/report.md by docs/demo/update_readme.py."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
MD_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HTML_SRC = re.compile(r"<(?:img|a)\s[^>]*(?:src|href)=\"([^\"]+)\"")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img\s[^>]*src=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The page without code blocks and inline code (a `[x](y)` there is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _links(page: Path) -> list[str]:
    text = _prose(page.read_text())
    return MD_LINK.findall(text) + HTML_SRC.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    for page in (
        "pretraining.md",
        "scaling-out.md",
        "probe.md",
        "robustness.md",
        "fourier.md",
        "gradcam.md",
        "report.md",
        "checkpoints.md",
        "troubleshooting.md",
        "performance.md",
        "architecture.md",
        "config.md",
        "curate.md",
    ):
        assert page in names, page


def test_slugs_follow_github():
    assert slug("What a run costs: `fastdino pretrain --plan`") == (
        "what-a-run-costs-fastdino-pretrain---plan"
    )
    assert slug("Official DINOv2 weights: import") == "official-dinov2-weights-import"
    assert slug("The report and the demo") == "the-report-and-the-demo"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(
                f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_figure_under_docs_is_shown_on_a_page():
    shown = set()
    for page in PAGES:
        for a, b in IMAGE.findall(_prose(page.read_text())):
            shown.add((page.parent / (a or b)).resolve())
    figures = {p.resolve() for p in (ROOT / "docs").rglob("*.png")}
    assert figures, "no figures under docs/"
    assert figures <= shown, sorted(str(p.relative_to(ROOT)) for p in figures - shown)


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "config.md"], ids=lambda p: p.name)
def test_every_figure_has_a_caption(page):
    """An image line is followed (after a blank line) by an italic caption line."""
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("![") and page.parent.name == "docs":
            following = [ln for ln in lines[i + 1 : i + 4] if ln.strip()]
            assert following and following[0].startswith("*"), (page.name, line)


def test_readme_is_a_front_page_starting_with_the_makefile_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    commands = re.findall(r"^(make \w+|fastdino [\w-]+)", FENCE.search(text).group(0), re.M)
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(VENV\)/bin/fastdino demo --out demo_out$", makefile, re.M)
    assert re.search(r"^test: .*\n(\t.*\n)*\t\$\(PY\) -m pytest", makefile, re.M)
    assert "demo_out/report/report.md" in text.split("make test")[0]
    for doc in ("docs/pretraining.md", "docs/troubleshooting.md", "docs/architecture.md"):
        assert f"]({doc}" in text, doc
    # every docs page is linked from the README
    linked = {Path(t.partition("#")[0]).name for t in _links(ROOT / "README.md")}
    missing = {p.name for p in PAGES[1:]} - linked
    assert not missing, missing


def test_readme_lists_every_subcommand():
    from fastdino_cli.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    table = text.split("## Subcommands", 1)[1].split("\n## ", 1)[0]
    for entry in COMMANDS:
        assert f"`fastdino {entry.name}" in table, entry.name


def _update_script():
    spec = importlib.util.spec_from_file_location(
        "update_readme", ROOT / "docs" / "demo" / "update_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = """# fastdino report

## Runs

| run | preset | steps | wall-clock | FLOPs | time vs dinov2 | FLOPs vs dinov2 |
|---|---|---|---|---|---|---|
| dinov2 | demo-dinov2 | 500/500 | 14.4 min | 40.8 T | +0.0% | +0.0% |
| fastdinov2 | demo | 500/500 | 9.3 min | 18.2 T | -35.6% | -55.4% |

## Probes (top-1 %, frozen teacher features)

| run | kNN k=20 | linear | kNN vs dinov2 | linear vs dinov2 |
|---|---|---|---|---|
| dinov2 | 48.1 | 43.8 | +0.0% | +0.0% |
| fastdinov2 | 45.6 | 47.5 | -5.2% | +8.6% |

## Robustness (ImageNet-C corruptions, top-1 %)

| run | clean | mean 19 | mean 19 vs dinov2 |
|---|---|---|---|
| dinov2 | 43.8 | 30.5 | +0.0% |
| fastdinov2 | 47.5 | 32.9 | +8.2% |
"""
TIMINGS = {"date": "2026-12-02T10:00:00+00:00", "cpu_count": 2, "seconds_all_steps": 1620.0}


def test_demo_numbers_go_into_the_readme_as_one_table_with_a_footnote(tmp_path):
    u = _update_script()
    excerpt = u.readme_excerpt(REPORT, TIMINGS, note="a shared VM")
    rows = [ln for ln in excerpt.splitlines() if ln.startswith("|")]
    assert len(rows) == 4
    assert rows[2].split(" | ")[1:] == ["500/500", "40.8 T", "14.4 min", "48.1", "43.8", "30.5 |"]
    assert "18.2 T (-55.4%)" in rows[3] and "47.5 (+8.6%)" in rows[3] and "32.9 (+8.2%)" in rows[3]
    footnote = excerpt.splitlines()[-1]
    assert footnote.startswith("[^demo]: `fastdino demo` on 2026-12-02, 2 CPU cores, 27 min")
    assert "a shared VM" in footnote and "2026" not in excerpt.split("[^demo]:")[0]

    readme = tmp_path / "README.md"
    start, end = u.README_MARKERS
    readme.write_text(f"intro\n{start}\nold\n{end}\nrest\n")
    u.replace_between(readme, u.README_MARKERS, excerpt)
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith(f"{end}\nrest\n")


def test_the_pages_hold_the_markers_the_script_rewrites():
    u = _update_script()
    for page, markers in (("README.md", u.README_MARKERS), ("docs/report.md", u.REPORT_MARKERS)):
        text = (ROOT / page).read_text()
        assert text.count(markers[0]) == 1 and text.count(markers[1]) == 1, page
        assert text.index(markers[0]) < text.index(markers[1]), page
    for name in u.FIGURES:
        assert (ROOT / "docs" / "demo" / name).exists(), name
