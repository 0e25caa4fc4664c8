"""``metrics.jsonl``: the one writer and the one reader of a run's metrics log.

One JSON object per logged step, one per line, appended and flushed as the run goes. A process
killed in the middle of a write leaves its last line cut: every reader here skips a line that is
not a complete record (an object with an integer ``step``), and a resumed run rewrites the file
with its complete lines before appending (``truncate_metrics``), so a cut line never glues
itself to the next record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from fastdino_cli.errors import DataError
from fastdino_cli.fileio import write_text


def _records(
    text: str, bad: Callable[[int, str], None] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) of every complete record in ``text``, in file order. A line cut by a crash
    (not JSON) is skipped; a whole JSON line that is no record (no integer ``step``) is skipped
    too, or handed to ``bad(line number, line)`` when given."""
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue  # a line cut by a crash
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            yield line, record
        elif bad is not None:
            bad(number, line)


_NOT_A_LOG = "pass a run directory written by `fastdino pretrain` (its metrics.jsonl)"


def read_metrics(path: Path, strict: bool = False) -> list[dict[str, Any]]:
    """Every complete record of ``path`` in file order ([] when there is no file).

    ``strict`` is for a file a user named: one that is not a metrics log at all (not text, or a
    whole JSON line without an integer ``step``) is a one-line ``DataError`` naming the file and
    the line, instead of an empty or partial log. A line cut by a crash is skipped either way.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        if not strict:
            return []
        raise DataError(f"{path} is not a metrics log (not text); {_NOT_A_LOG}") from None

    def not_a_record(number: int, line: str) -> None:
        short = line.strip() if len(line.strip()) <= 40 else line.strip()[:37] + "..."
        raise DataError(
            f"{path} line {number} is not a metrics record (no integer 'step': {short}); "
            f"{_NOT_A_LOG}"
        )

    return [record for _, record in _records(text, not_a_record if strict else None)]


def last_metrics(path: Path) -> dict[str, Any]:
    """The last complete record ({} when there is none)."""
    records = read_metrics(path)
    return records[-1] if records else {}


def last_logged_step(path: Path) -> int | None:
    """The highest logged step (None: no file, or no complete record)."""
    try:
        records = read_metrics(path)
    except OSError:
        return None
    return max((r["step"] for r in records), default=None)


def truncate_metrics(path: Path, keep_before_step: int) -> None:
    """Keep the complete records of steps before ``keep_before_step`` (the ones the resumed
    checkpoint includes); rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line, r in _records(path.read_text()) if r["step"] < keep_before_step]
    write_text(path, "".join(x + "\n" for x in kept))


class MetricsWriter:
    """Appends records to ``metrics.jsonl``, each one line flushed at once (a reader or a
    crash sees whole lines, but for the very last one); use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def __enter__(self) -> MetricsWriter:
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        return self

    def append(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "MetricsWriter.append outside its with block"
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
