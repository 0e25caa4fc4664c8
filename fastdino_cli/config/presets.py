"""The preset registry and config resolution.

Presets are YAML files in ``fastdino_cli/presets/`` (shipped inside the installed package). A
preset holds only its differences from what it ``extends:``, plus a ``description:`` line for
``presets list``. ``resolve_config`` layers defaults <- preset chain <- ``--config`` file <-
``key=value`` overrides.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml

from fastdino_cli.config.batch import clear_partner_of_override, clear_partners
from fastdino_cli.config.overrides import apply_override, parse_override, suggest, validate_config
from fastdino_cli.config.paper import departures_note
from fastdino_cli.config.plain import deep_merge
from fastdino_cli.config.schema import Config
from fastdino_cli.config.yamlio import load_yaml, read_yaml_mapping
from fastdino_cli.errors import ConfigError


def preset_dir() -> Path:
    """The folder of the shipped preset YAML files."""
    return Path(str(importlib.resources.files("fastdino_cli") / "presets"))


def list_presets() -> dict[str, str]:
    """Name -> one-line description of every shipped preset, sorted by name."""
    out = {}
    for path in sorted(preset_dir().glob("*.yaml")):
        raw = read_yaml_mapping(path)
        out[path.stem] = str(raw.get("description", "")).strip()
    return out


def preset_parent(name: str) -> str | None:
    """The preset ``name`` extends, if any."""
    parent = read_yaml_mapping(_preset_path(name)).get("extends")
    return str(parent) if parent else None


def _preset_path(name: str) -> Path:
    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        names = list(list_presets())
        raise ConfigError(
            f"unknown preset {name!r}{suggest(name, names)}; see `fastdino presets list`"
        )
    return path


def _load_preset_chain(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset merged over everything it ``extends:``, as plain data."""
    path = _preset_path(name)
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself through {' -> '.join(seen)}")
    raw = read_yaml_mapping(path)
    parent = raw.pop("extends", None)
    base = _load_preset_chain(str(parent), (*seen, name)) if parent else {}
    return clear_partners(deep_merge(base, raw), raw)


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Build a validated ``Config``: defaults <- preset chain <- config file <- overrides."""
    data: dict[str, Any] = {}
    if preset:
        data = _load_preset_chain(preset)
        data["preset"] = preset
    if config_file:
        file_data = read_yaml_mapping(Path(config_file))
        file_data.pop("extends", None)
        data = clear_partners(deep_merge(data, file_data), file_data)
    return validate_config(apply_overrides(data, overrides or []))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` items applied in order to plain config data; one that sets a batch or an
    epoch key clears the other key of its pair (``config/batch.py``)."""
    for item in overrides:
        key, value = parse_override(item)
        data = clear_partner_of_override(apply_override(data, key, value), key, value)
    return data


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``presets show`` prints and runs save)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def run_config_yaml(cfg: Config, world_size: int) -> str:
    """A run's ``config.yaml``: the resolved config, headed by ``# paper:`` comment lines that
    list where the run (on ``world_size`` processes) departs from its paper recipe."""
    return departures_note(cfg, world_size) + config_to_yaml(cfg)


def load_config_yaml(text: str, source: str = "config.yaml") -> Config:
    """Inverse of ``config_to_yaml``; ``source`` names the file in errors."""
    data = load_yaml(text, source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of config keys, got {type(data).__name__}")
    return validate_config(data)
