"""The ``fastdino`` command line: a table of contents.

This module only registers subcommands and reports errors. Each subcommand lives in
``fastdino_cli/commands/`` and calls one library function that a notebook can call too.
``main`` is the single place that turns a ``FastdinoError`` into one line on stderr with exit
code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from fastdino_cli.commands import checkpoint as checkpoint_cmd
from fastdino_cli.commands import corrupt_eval as corrupt_eval_cmd
from fastdino_cli.commands import curate as curate_cmd
from fastdino_cli.commands import data as data_cmd
from fastdino_cli.commands import demo as demo_cmd
from fastdino_cli.commands import fourier as fourier_cmd
from fastdino_cli.commands import gradcam as gradcam_cmd
from fastdino_cli.commands import plot_metrics as plot_metrics_cmd
from fastdino_cli.commands import presets as presets_cmd
from fastdino_cli.commands import pretrain as pretrain_cmd
from fastdino_cli.commands import probe as probe_cmd
from fastdino_cli.commands import report as report_cmd
from fastdino_cli.errors import FastdinoError
from fastdino_cli.fileio import describe_write_error

app = typer.Typer(
    name="fastdino",
    help="DINOv2-style self-supervised ViT pretraining with the FastDINOv2 frequency curriculum, "
    "and the evaluations that measure what it buys.",
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


pretrain_cmd.register(app)
plot_metrics_cmd.register(app)
probe_cmd.register(app)
corrupt_eval_cmd.register(app)
fourier_cmd.register(app)
gradcam_cmd.register(app)
report_cmd.register(app)
curate_cmd.register(app)
demo_cmd.register(app)
app.add_typer(presets_cmd.app, name="presets")
app.add_typer(checkpoint_cmd.app, name="checkpoint")
app.add_typer(data_cmd.app, name="data")


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
