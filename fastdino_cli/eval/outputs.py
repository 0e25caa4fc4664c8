"""The output folder of an evaluation: checked before the work, so an hour of compute never ends
in "File exists" because ``--out`` named a file (a checkpoint, say).

Every evaluation that writes into a folder (``corrupt-eval``, ``fourier-heatmap``, ``gradcam``,
``report``) calls :func:`check_output_dir` first; the files themselves are written through
``fastdino_cli.fileio``'s atomic writer.
"""

from __future__ import annotations

from pathlib import Path

from fastdino_cli.errors import ConfigError


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """``path`` if it is a folder or can become one; a one-line ``ConfigError`` otherwise.

    Creates nothing: a folder that does not exist yet is made when the first file is written.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p == path else f"is under {p}, which is a file"
                raise ConfigError(
                    f"{flag} {path} {what}, not a folder; give a folder for the results "
                    "(nothing was written)"
                )
            break
    return path
