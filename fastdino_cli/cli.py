"""The ``fastdino`` command line: a table of contents.

This module only lists the subcommands and reports errors. Each subcommand lives in
``fastdino_cli/commands/`` and calls one library function that a notebook can call too; its
module is imported only when the command runs or shows its help (``commands/_lazy.py``), so
``fastdino --help`` and usage errors answer without importing torch. ``main`` is the single place
that turns a ``FastdinoError`` into one line on stderr with exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from fastdino_cli.commands._lazy import LazyCommand, LazyGroup
from fastdino_cli.console import install_warning_format
from fastdino_cli.errors import FastdinoError
from fastdino_cli.fileio import describe_write_error

TRAINING, EVALUATION, UTILITIES = "Training", "Evaluation", "Utilities"

COMMANDS = (
    LazyCommand(
        "pretrain",
        "fastdino_cli.commands.pretrain",
        TRAINING,
        "Pretrain a ViT with DINOv2 and the FastDINOv2 curriculum (resumes a run).",
    ),
    LazyCommand(
        "plot-metrics",
        "fastdino_cli.commands.plot_metrics",
        TRAINING,
        "Plot a run's losses, learning rate and crop size per step.",
    ),
    LazyCommand(
        "probe",
        "fastdino_cli.commands.probe",
        EVALUATION,
        "kNN and linear probes on frozen features; stores the head in the checkpoint.",
    ),
    LazyCommand(
        "corrupt-eval",
        "fastdino_cli.commands.corrupt_eval",
        EVALUATION,
        "ImageNet-C accuracy per corruption and severity, mCE, tables and figures.",
    ),
    LazyCommand(
        "fourier-heatmap",
        "fastdino_cli.commands.fourier",
        EVALUATION,
        "Fourier error-sensitivity heatmaps of one or more checkpoints.",
    ),
    LazyCommand(
        "gradcam",
        "fastdino_cli.commands.gradcam",
        EVALUATION,
        "Grad-CAM maps of one or more checkpoints, side by side.",
    ),
    LazyCommand(
        "report",
        "fastdino_cli.commands.report",
        EVALUATION,
        "Compare runs in one Markdown report: cost, probes, robustness, figures.",
    ),
    LazyCommand(
        "presets",
        "fastdino_cli.commands.presets",
        UTILITIES,
        "List presets, print resolved configs and the reference of every config key.",
    ),
    LazyCommand(
        "checkpoint",
        "fastdino_cli.commands.checkpoint",
        UTILITIES,
        "Inspect checkpoints; import DINOv2 weights, export to timm or DINOv2.",
    ),
    LazyCommand(
        "data",
        "fastdino_cli.commands.data",
        UTILITIES,
        "Build the embedded demo dataset (no download).",
    ),
    LazyCommand(
        "curate",
        "fastdino_cli.commands.curate",
        UTILITIES,
        "Curate a pretraining list from an uncurated pool (dedup + retrieval).",
    ),
    LazyCommand(
        "demo",
        "fastdino_cli.commands.demo",
        UTILITIES,
        "The whole pipeline on the demo data, ending in one report (`make demo`).",
    ),
)
"""Every subcommand, in the order and under the panel ``fastdino --help`` lists it."""


class FastdinoGroup(LazyGroup):
    """The root group: the commands of ``COMMANDS``, each imported on first use."""

    entries = COMMANDS


app = typer.Typer(
    name="fastdino",
    cls=FastdinoGroup,
    help="DINOv2-style self-supervised ViT pretraining with the FastDINOv2 frequency curriculum, "
    "and the evaluations that measure what it buys.",
    epilog="Run `fastdino COMMAND --help` for a command's options and examples; "
    "`fastdino demo` runs everything on bundled data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": os.environ.get("FASTDINO_DEBUG") == "1"}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    """fastdino: pretrain, probe and stress-test DINOv2-style ViTs."""
    if debug:
        _state["debug"] = True


def _one_line(e: FastdinoError) -> str:
    """The message; for an error re-raised from a data-loader worker (torch prepends "Caught ...
    in DataLoader worker" and the worker's traceback), only the original message."""
    text = str(e).strip()
    if text.startswith("Caught ") and "\n" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        text = last.removeprefix(prefix)
    return " ".join(text.split("\n")) if text else type(e).__name__


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, report user errors in one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("FASTDINO_DEBUG") == "1"
    install_warning_format()  # every Python warning: one `fastdino: warning: ...` line
    try:
        app(args=args, prog_name="fastdino", standalone_mode=True)
    except FastdinoError as e:
        if _state["debug"]:
            raise
        print(f"fastdino: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("fastdino: interrupted", file=sys.stderr)
        sys.exit(130)
    except (OSError, RuntimeError) as e:
        line = _os_error_line(e)
        if line is None or _state["debug"]:
            raise
        print(f"fastdino: error: {line}", file=sys.stderr)
        sys.exit(2)


_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _os_error_line(e: BaseException) -> str | None:
    """One line for an error of the storage (disk full, quota, read-only filesystem: also when
    torch wraps it in a RuntimeError) or of a path (missing, unreadable); None for a bug."""
    line = describe_write_error(e)
    if line is not None or not isinstance(e, _PATH_ERRORS):
        return line
    where = f"{e.filename}: " if getattr(e, "filename", None) else ""
    return f"{where}{e.strerror or e}"


if __name__ == "__main__":
    main()
