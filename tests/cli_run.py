"""Run the ``fastdino`` command line in-process, as the tests of every command do."""

from __future__ import annotations

from fastdino_cli.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``fastdino ARGV`` in this process: (exit code, stdout, stderr) captured by ``capsys``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
