"""Plain-data helpers for configs as dicts, lists and scalars (what YAML and checkpoints hold)."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out: dict[str, Any] = {}
    for k, v in base.items():
        out[k] = deep_merge({}, v) if isinstance(v, dict) else _copy(v)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = deep_merge({}, v) if isinstance(v, dict) else _copy(v)
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, list):
        return [deep_merge({}, x) if isinstance(x, dict) else _copy(x) for x in v]
    return v


def plain(obj: Any) -> Any:
    """Tuples turned into lists, recursively (YAML-safe plain data)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj
