"""One terminal style (``fastdino_cli/console.py``): progress lines and bars, and warnings as one
``fastdino: warning: ...`` line without a Python source line, in pretrain, evaluations and demo."""

from __future__ import annotations

import io
import re
import warnings

import pytest

from fastdino_cli import console
from fastdino_cli.cli import main
from fastdino_cli.report.demo import Progress
from fastdino_cli.train.progress import ProgressReporter


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (59.4, "59s"), (60, "1m00s"), (200, "3m20s"), (3900, "1h05m"), (None, "?")],
)
def test_eta_reads_like_a_clock(seconds, text):
    assert console.format_eta(seconds) == text
    assert console.format_eta(float("nan")) == console.format_eta(float("inf")) == "?"


def test_progress_line_fields_in_one_order():
    info = console.progress_fields(stage=1, size=224, loss=6.12345, lr=1e-3, images_per_s=57.4)
    assert info == "stage 1 224px loss 6.123 lr 1.00e-03 57 img/s"
    assert console.progress_line("probe", 3, 10, info, eta=200) == f"probe 3/10 {info} ETA 3m20s"
    assert console.progress_line("demo", 1, 12, "demo data ...") == "demo 1/12 demo data ..."
    assert console.progress_fields(size=64, extra="data-wait 3%") == "64px data-wait 3%"


def test_warnings_and_notes_are_one_line_on_stderr(capsys):
    console.warn("feature cache not written\n(disk full)")
    console.note("skipping unreadable image a.png")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "fastdino: warning: feature cache not written (disk full)",
        "fastdino: skipping unreadable image a.png",
    ]


def test_python_warnings_print_without_their_source_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        console.install_warning_format()
        warnings.warn("xformers missing;\n  using sdpa", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == "fastdino: warning: xformers missing; using sdpa\n"


def test_the_cli_installs_the_warning_format(capsys):
    with warnings.catch_warnings():
        try:
            main(["presets", "list"])
        except SystemExit:
            pass
        assert warnings.showwarning is console._showwarning
    capsys.readouterr()


def test_a_bar_off_a_terminal_draws_nothing_but_its_lines():
    stream = io.StringIO()
    with console.Bar("probe", 10, stream=stream) as bar:
        assert not bar.live
        bar.advance(4)
        bar.update(info="loss 1.0")
        bar.line("probe 4/10")
    assert bar.completed == 4 and stream.getvalue() == "probe 4/10\n"


def test_a_live_bar_shows_label_count_eta_and_keeps_warnings_above_it(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with console.Bar("pretrain", 500, completed=100, stream=stream, enabled=True) as bar:
        bar.update(completed=120, info="stage 0 32px loss 6.123")
        console.warn("one line")
    text = stream.getvalue()
    assert "pretrain" in text and "120/500" in text and "ETA" in text and "loss 6.123" in text
    assert "fastdino: warning: one line" in text
    assert console._live == []


def test_pretrain_plain_progress_is_the_house_line(capsys):
    reporter = ProgressReporter(
        None, start=0, stop=4, total=4, log_period=2, global_batch=8, rich=False
    )
    record = {"step": 1, "stage": 0, "global_crops_size": 32, "loss": 6.5, "lr": 1e-3}
    with reporter:
        reporter.step({**record, "step": 0}, wait=0.0)  # not due: log_period 2
        reporter.step(record, wait=0.0)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    pattern = r"pretrain 2/4 stage 0 32px loss 6\.500 lr 1\.00e-03 \d+ img/s data-wait \d+% ETA \S+"
    assert re.fullmatch(pattern, lines[0]), lines


def test_demo_plain_progress_is_the_house_line(capsys):
    with Progress(2, enabled=False) as p:
        p.start("demo data")
        p.finish("demo data", 1.25, "done")
    assert capsys.readouterr().out.splitlines() == [
        "demo 1/2 demo data ...",
        "demo 1/2 demo data: done (1.2 s)",
    ]
