"""The config keys that hold filesystem paths, and making them absolute when a run starts."""

from __future__ import annotations

import os
from pathlib import Path

from fastdino_cli.config.overrides import validate_config
from fastdino_cli.config.schema import Config

PATH_KEYS = ("data.train", "train.output_dir", "distill.teacher")
"""Every config key that holds a filesystem path."""
DEMO_DATA_ALIAS = "demo"
"""``data.train: demo``: a keyword (the embedded demo data), not a path."""


def absolute_path(value: str, base: str | Path) -> str:
    """``value`` (``~`` expanded) made absolute against ``base``, normalised, links kept."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """``cfg`` with every path key (``PATH_KEYS``) absolute, against ``base`` (default: the
    current directory).

    A run stores its resolved config in ``config.yaml``; a relative path there would mean
    something else when the run is resumed from another directory (other data, or a refusal
    because ``demo_out/data/train`` is not spelled ``/home/me/demo_out/data/train``). Runs
    therefore resolve their paths when they start and store them absolute.
    """
    base = Path.cwd() if base is None else base
    data = cfg.to_dict()
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = data[section][name]
        if isinstance(value, str) and value and value != DEMO_DATA_ALIAS:
            data[section][name] = absolute_path(value, base)
    return validate_config(data)
