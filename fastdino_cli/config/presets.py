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

from fastdino_cli.config.overrides import apply_override, parse_override, suggest, validate_config
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
    return deep_merge(base, raw)


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
        data = deep_merge(data, file_data)
    for item in overrides or []:
        key, value = parse_override(item)
        data = apply_override(data, key, value)
    return validate_config(data)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``presets show`` prints and runs save)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def load_config_yaml(text: str, source: str = "config.yaml") -> Config:
    """Inverse of ``config_to_yaml``; ``source`` names the file in errors."""
    data = load_yaml(text, source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of config keys, got {type(data).__name__}")
    return validate_config(data)
