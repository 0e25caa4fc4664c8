"""A run's stored ``config.yaml``: reading it, its paths, and whether a new config may resume it.

``config.yaml`` is written by ``pretrain`` (through the one atomic writer) with absolute paths;
older runs stored paths as typed, relative to where the run was started (``stored_path_bases``).
Resuming compares the stored config with the new one key by key, ignoring the keys that drive a
run without changing what it computes (``RUN_CONTROL_KEYS``), and paths as places.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastdino_cli.config import DEMO_DATA_ALIAS, PATH_KEYS, absolute_path, deep_merge
from fastdino_cli.errors import ConfigError
from fastdino_cli.rundir.layout import CONFIG

# Keys that change how a run is driven, not what it computes: they may differ on resume.
RUN_CONTROL_KEYS = (
    "preset",
    "description",
    "train.max_steps",
    "train.output_dir",
    "train.log_period",
    "train.checkpoint_period",
    "train.keep_checkpoints",
    "train.trackers",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
)

_DAMAGED = "restore it, or delete it (pretrain writes it again when the run starts or resumes)"


def read_stored_config(run_dir: Path) -> dict[str, Any] | None:
    """``RUN_DIR/config.yaml`` as plain data; None when there is none.

    A file that is there but is not a config (not YAML, empty, not a mapping, unreadable) is a
    one-line ``ConfigError`` naming it: a run directory whose config cannot be read is neither
    resumed with a guessed config nor started over.
    """
    path = Path(run_dir) / CONFIG
    if not path.exists():
        return None
    from fastdino_cli.config.yamlio import load_yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; {_DAMAGED}") from None
    try:  # the guarded reader: an alias bomb in a run's config is refused like a preset's
        data = load_yaml(text, str(path))
    except ConfigError as e:
        raise ConfigError(f"{e}; {_DAMAGED}") from None
    if data is None:
        raise ConfigError(f"{path} is empty, not a run's config; {_DAMAGED}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} holds a {type(data).__name__}, not a run's config (a mapping of config "
            f"keys); {_DAMAGED}"
        )
    return data


def stored_path_bases(run_dir: Path, stored: dict[str, Any]) -> list[Path]:
    """The directories a stored config's relative paths may be relative to.

    Runs store absolute paths now (``config.with_absolute_paths``); older runs stored what was
    typed, relative to the directory the run was first started from. That directory is
    recovered from the stored relative ``train.output_dir``: the run directory's absolute path
    with it removed from the end (``/home/me`` for ``demo_out/runs/x`` at
    ``/home/me/demo_out/runs/x``). Where that is not possible (an absolute or ``..`` output
    dir), the current directory and the run directory's parent are both candidates.
    """
    out = flatten(stored).get("train.output_dir")
    here = Path(os.path.abspath(run_dir))
    if isinstance(out, str) and out and not os.path.isabs(os.path.expanduser(out)):
        parts = Path(os.path.normpath(out)).parts
        if ".." not in parts and here.parts[-len(parts) :] == parts:
            return [Path(*here.parts[: -len(parts)])]
    return [Path.cwd(), here.parent]


def resolve_stored_paths(run_dir: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config (plain data) with its relative paths made absolute against the first
    of ``stored_path_bases``: the config an old run dir means, from wherever it is resumed."""
    base = stored_path_bases(run_dir, stored)[0]
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = (out.get(section) or {}).get(name)
        if isinstance(value, str) and value and value != DEMO_DATA_ALIAS:
            out[section][name] = absolute_path(value, base)
    return out


def _same_stored_path(run_dir: Path, stored: dict[str, Any], old: Any, new: Any) -> bool:
    """Whether a stored path value and a new one name the same place (see
    ``stored_path_bases``; links resolved, so a path through a symlink matches too)."""
    if not (isinstance(old, str) and isinstance(new, str)) or DEMO_DATA_ALIAS in (old, new):
        return old == new
    target = os.path.realpath(absolute_path(new, Path.cwd()))
    return any(
        os.path.realpath(absolute_path(old, base)) == target
        for base in stored_path_bases(run_dir, stored)
    )


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the dotted keys of overrides and messages)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every computation-relevant key that differs."""
    a, b = flatten(old), flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RUN_CONTROL_KEYS:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return diffs


def check_resume_config(
    run_dir: Path, old: dict[str, Any], new: dict[str, Any], force: bool
) -> list[str]:
    """Refuse (``ConfigError``) to resume a run with another config unless ``force``; paths
    are compared as places, not spellings (``_same_stored_path``). Returns the differences."""
    flat_old, flat_new = flatten(old), flatten(new)
    same = [
        k
        for k in PATH_KEYS
        if k in flat_old and _same_stored_path(run_dir, old, flat_old[k], flat_new.get(k))
    ]
    if same:
        old = deep_merge(old, {})
        for key in same:
            section, name = key.split(".")
            old[section][name] = flat_new.get(key)
    diffs = config_differences(old, new)
    if diffs and not force:
        shown = "; ".join(diffs[:3]) + (f"; ... ({len(diffs)} in all)" if len(diffs) > 3 else "")
        raise ConfigError(
            f"the config differs from the run in {run_dir} ({shown}); resume with the same "
            "config, pass --force-config to resume anyway, or choose another --out"
        )
    return diffs
