"""Import rules of the evaluations: compute never draws, and their commands start cheap.

* No module under ``fastdino_cli/eval`` imports matplotlib, pytorch-grad-cam's drawing helpers
  or ``fastdino_cli.figures`` (at the top or inside a function): evaluations write numbers and
  return results; ``figures/`` draws them.
* ``figures/`` and ``report/`` never import the command line.
* Importing the evaluation command modules loads no torch, matplotlib, pandas or grad-cam: the
  heavy modules are imported inside the command functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastdino_cli"


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` anywhere in the file names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        hits = sorted(
            m
            for m in imported_modules(path)
            if any(m == f or m.startswith(f"{f}.") for f in forbidden)
        )
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


def test_the_import_scanner_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from matplotlib import pyplot\n    import a.b\n")
    assert {"os", "matplotlib", "matplotlib.pyplot", "a.b"} <= imported_modules(f)


def test_evaluations_never_draw():
    assert (
        _offending("eval", ("matplotlib", "fastdino_cli.figures", "pytorch_grad_cam.utils.image"))
        == {}
    )


@pytest.mark.parametrize("folder", ["figures", "report", "eval"])
def test_libraries_never_import_the_command_line(folder):
    assert _offending(folder, ("fastdino_cli.commands", "fastdino_cli.cli", "typer")) == {}


EVAL_COMMANDS = ("probe", "corrupt_eval", "fourier", "gradcam", "report", "demo", "plot_metrics")
HEAVY = ("torch", "matplotlib", "pandas", "pytorch_grad_cam", "cv2", "scipy")


def test_evaluation_commands_import_no_heavy_module():
    code = (
        "import sys\n"
        + "".join(f"import fastdino_cli.commands.{m}\n" for m in EVAL_COMMANDS)
        + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
