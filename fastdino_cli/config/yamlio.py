"""Reading YAML that a user hands us: presets, ``--config`` files, run configs, override values.

``yaml.safe_load`` executes no code, but aliases still let a few hundred bytes describe billions
of values ("billion laughs": each level repeats the previous one ten times). PyYAML builds such
a document cheaply by sharing one object per anchor; whatever copies or validates it afterwards
(``deep_merge``, pydantic) then walks every repetition, and time grows tenfold per level. So
``load_yaml`` composes the node graph first and counts what it expands to, visiting each shared
node once: the count costs as much as the text is long, and a document that expands past
``MAX_YAML_VALUES`` is refused before anything is constructed or copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fastdino_cli.errors import ConfigError

MAX_YAML_VALUES = 100_000
"""Most scalars, lists and mappings a config document may expand to (a full resolved config
has about 200; a curriculum of many stages a few thousand)."""


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` refusing alias bombs and recursive aliases; ``source`` names the
    file or override in the one-line ``ConfigError`` of a bad document."""
    try:  # the reader checks the characters as it is built: a NUL byte fails here
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, {}, set())
        if expanded > MAX_YAML_VALUES:
            raise ConfigError(
                f"{source}: its YAML aliases expand to more than {MAX_YAML_VALUES:,} values "
                f"({expanded:.3g}), far beyond any config; write the values out instead of "
                "nesting aliases (*name)"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {str(e).splitlines()[0]}") from None
    except _RecursiveAlias:
        raise ConfigError(
            f"{source}: a YAML alias refers to the list or mapping it is part of; "
            "a config cannot contain itself"
        ) from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a config") from None
    finally:
        loader.dispose()


class _RecursiveAlias(Exception):
    """An anchor used inside its own node (``&a [*a]``): it would expand forever."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_: set[int]) -> int:
    """Values ``node`` stands for once every alias is expanded (shared nodes counted once per
    use, computed once)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise _RecursiveAlias
    if isinstance(node, yaml.ScalarNode):
        return 1
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded_size(child, memo, open_)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, memo, open_) + _expanded_size(v, memo, open_)
    open_.discard(key)
    memo[key] = total
    return total


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping of config keys (an empty file is an empty mapping)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; pass a YAML file") from None
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data
