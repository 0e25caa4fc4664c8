"""Dotted ``key=value`` overrides, validation against the schema, and did-you-mean.

Every error names the dotted key at fault (``optim.base_lr``, ``curriculum.stages.1.end``);
an unknown key suggests the closest valid one, as ultralytics' ``check_dict_alignment`` does.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from fastdino_cli.config.plain import deep_merge
from fastdino_cli.config.schema import Config
from fastdino_cli.config.stages import StageConfig
from fastdino_cli.config.yamlio import load_yaml
from fastdino_cli.errors import ConfigError


def validate_config(data: dict[str, Any]) -> Config:
    """Validate plain data against the schema; errors name the dotted key."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe_validation_error(e)) from None


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.base_lr=1e-3"`` -> ``("optim.base_lr", 0.001)``; values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not of the form key=value (e.g. optim.base_lr=1e-3)"
        )
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = load_yaml(text, f"override {key}") if text.strip() else None
    except ConfigError as e:
        if "not valid YAML" not in str(e):
            raise  # an alias bomb in a value is refused, not taken as a string
        value = text
    # YAML 1.1 reads "1e-3" as a string; accept it as the float a user means.
    if isinstance(value, str):
        try:
            value = float(value) if value.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            pass
    return key, value


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set ``dotted`` (``a.b.c``; integers index lists) in a copy of ``data``."""
    out = deep_merge({}, data)
    parts = dotted.split(".")
    node: Any = out
    schema: Any = Config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                prefix = ".".join(parts[:i])
                raise ConfigError(
                    f"{dotted}: {prefix} has {len(node)} entries, index {part!r} is out of range"
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                if node[idx] is None:
                    node[idx] = {}
                node = node[idx]
            schema = StageConfig if schema is list else schema
            continue
        schema = _check_key(schema, part, ".".join(parts[: i + 1]))
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if child is None:
                child = [StageConfig().model_dump()] if part == "stages" else {}
                node[part] = child
            node = child
    return out


def _check_key(schema: Any, key: str, dotted: str) -> Any:
    """Return the schema of ``key`` inside ``schema``, or raise with a did-you-mean."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        fields = schema.model_fields
        if key not in fields:
            prefix = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
            raise ConfigError(f"unknown config key {dotted!r}{suggest(key, list(fields), prefix)}")
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann
        if key == "stages":
            return list
        return None
    return None


def suggest(word: str, options: list[str], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _describe_validation_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    dotted = ".".join(loc)
    if err["type"] == "extra_forbidden":
        schema: Any = Config
        for part in loc[:-1]:
            schema = _check_key(schema, part, dotted) if not part.isdigit() else StageConfig
        options = list(schema.model_fields) if schema else []
        prefix = ".".join(loc[:-1])
        prefix = prefix + "." if prefix else ""
        return f"unknown config key {dotted!r}{suggest(loc[-1], options, prefix)}"
    msg = err["msg"]
    if err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    if not dotted:
        return f"invalid config: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"invalid value for {dotted}: {msg}{shown}"
