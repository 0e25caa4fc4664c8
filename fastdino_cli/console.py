"""What fastdino prints while it works: ONE style for progress and for warnings.

Why one owner: ``pretrain``, the evaluations and ``demo`` each used to draw their own bar (rich
with other columns, tqdm, plain lines in another order) and warnings came out as Python
``warnings`` with a source line under them. Every progress display and every warning of the tool
goes through here, so a user learns one format:

- progress on a terminal: ``LABEL ━━━━━━━━━  120/500 0:01:05 ETA 0:03:20 stage 0 32px loss 6.123
  57 img/s``; elsewhere (logs, CI, pipes) one plain line per update,
  ``LABEL 120/500 stage 0 32px loss 6.123 57 img/s ETA 3m20s`` (``progress_line``);
- a warning: one line on stderr, ``fastdino: warning: MESSAGE`` (``warn``), also for the Python
  warnings that torch or a library raises once ``install_warning_format`` ran (the CLI does);
- a note about the run (a skipped image, a launch): ``fastdino: MESSAGE`` (``note``).

While a bar is live, warnings and notes are printed through its console, above the bar, so the
bar stays intact. Light on purpose: rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import TextIO

PREFIX = "fastdino"
_live: list[Bar] = []  # the bars currently drawn, innermost last


def format_eta(seconds: float | None) -> str:
    """``3m20s``, ``1h05m``, ``12s``; ``?`` when unknown (nothing done yet)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_fields(
    *,
    stage: int | str | None = None,
    size: int | None = None,
    loss: float | None = None,
    lr: float | None = None,
    images_per_s: float | None = None,
    extra: str | None = None,
) -> str:
    """The fields of a progress line, always in this order and this format."""
    parts = []
    if stage is not None:
        parts.append(f"stage {stage}" + (f" {size}px" if size is not None else ""))
    elif size is not None:
        parts.append(f"{size}px")
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if lr is not None:
        parts.append(f"lr {lr:.2e}")
    if images_per_s is not None:
        parts.append(f"{images_per_s:.0f} img/s")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def progress_line(
    label: str, done: int, total: int, info: str = "", eta: float | None = None
) -> str:
    """One plain progress line: ``LABEL done/total [info] [ETA 3m20s]``."""
    line = f"{label} {done}/{total}"
    if info:
        line += f" {info}"
    if eta is not None:
        line += f" ETA {format_eta(eta)}"
    return line


def _emit(line: str, stream: TextIO | None = None) -> None:
    """Print one line on ``stream`` (stderr), above the live bar when one is drawn on this
    process's terminal (not while the output is redirected, e.g. into a demo step's log)."""
    for bar in reversed(_live):
        if bar.stream is sys.stdout or bar.stream is sys.stderr:
            bar.line(line)
            return
    print(line, file=stream or sys.stderr, flush=True)


def warn(message: str) -> None:
    """``fastdino: warning: MESSAGE``, one line on stderr (newlines folded into spaces)."""
    _emit(f"{PREFIX}: warning: {' '.join(str(message).split())}")


def note(message: str) -> None:
    """``fastdino: MESSAGE``, one line on stderr: an event of the run, not a problem."""
    _emit(f"{PREFIX}: {' '.join(str(message).split())}")


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """``warnings.showwarning`` replacement: the message alone, no file, line or source."""
    text = " ".join(str(message).split())
    try:
        _emit(f"{PREFIX}: warning: {text}", file)
    except (OSError, ValueError):  # a closed stream must not turn a warning into a crash
        pass


def install_warning_format() -> None:
    """Print every Python warning of this process as one ``fastdino: warning: ...`` line (the
    CLI calls it; a notebook that imports the library keeps its own warning display)."""
    warnings.showwarning = _showwarning


class Bar:
    """A progress bar in the house style: ``with Bar("probe", total=n) as bar: bar.advance(k)``.

    Drawn with rich when ``stream`` is a terminal (or ``enabled=True``); otherwise silent, except
    for the lines the caller prints with ``line``. ``transient`` bars vanish when done (feature
    extraction inside a bigger job). ``update(info=...)`` sets the text after the ETA (stage,
    loss, img/s: ``progress_fields``).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        completed: int = 0,
        unit: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        transient: bool = False,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.completed = completed
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty() if enabled is None else enabled
        self.transient = transient
        self._bar = None
        self._task = None

    def start(self) -> Bar:
        if self.live and self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = [TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn()]
            if self.unit:
                columns.append(TextColumn(self.unit))
            columns += [
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            ]
            self._bar = Progress(
                *columns,
                console=Console(file=self.stream),
                transient=self.transient,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.label, total=self.total, completed=self.completed, info=""
            )
            _live.append(self)
        return self

    def __enter__(self) -> Bar:
        return self.start()

    def advance(self, n: int = 1) -> None:
        self.update(completed=self.completed + n)

    def update(
        self, completed: int | None = None, info: str | None = None, total: int | None = None
    ) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if self._bar is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._task, completed=self.completed, total=self.total, **fields)

    def line(self, text: str) -> None:
        """A line of the job's own (a finished step, a plain progress line): above the live bar,
        or on the bar's stream when no bar is drawn."""
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self in _live:
            _live.remove(self)

    def __exit__(self, *exc: object) -> None:
        self.stop()
