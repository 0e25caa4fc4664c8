"""``docs/config.md``: every config key with its type, default and description, from the schema.

The descriptions are the docstrings under the fields (pydantic's ``use_attribute_docstrings``),
so documenting a key and defining it are one edit. Regenerate with::

    fastdino presets reference > docs/config.md

``tests/test_config_reference.py`` fails when the page is stale.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fastdino_cli.config.plain import plain
from fastdino_cli.config.presets import list_presets, preset_parent
from fastdino_cli.config.schema import Config

HEADER = """\
# Config reference

<!-- Generated from the schema in fastdino_cli/config/ by
     `fastdino presets reference > docs/config.md`; do not edit by hand. -->

A config is resolved as **schema defaults <- preset chain (`extends:`) <- `--config FILE` <-
`key=value` overrides**. Keys are dotted paths; values are YAML (`optim.base_lr=1e-3`,
`crops.blur_sigma=[0.1,2]`, `curriculum.stages.0.global_crops_size=96`). `fastdino presets show
NAME [key=value ...]` prints a resolved config; every run stores its own as `config.yaml`.
An unknown key or a value out of range is a one-line error naming the key.

Types: `x >= 1` and the like are the accepted range; `null` means "not set" (the description
says what is used then). No float may be `.inf` or `.nan`.
"""


def render_reference() -> str:
    """The whole page as Markdown."""
    parts = [HEADER, _presets_table(), "## Keys\n"]
    top = [(name, f) for name, f in Config.model_fields.items() if _section(f) is None]
    parts.append(_table("", top))
    for name, field in Config.model_fields.items():
        section = _section(field)
        if section is not None:
            parts.extend(_section_tables(name, section, field))
    return "\n".join(parts).rstrip() + "\n"


def count_keys() -> int:
    """Leaf keys documented (``dino.head.*`` and ``ibot.head.*`` count separately)."""
    return sum(len(rows) for rows in _leaf_rows(Config, ""))


# --------------------------------------------------------------------------------------------
# Sections and tables
# --------------------------------------------------------------------------------------------


def _presets_table() -> str:
    rows = ["## Presets\n", "| preset | extends | description |", "|---|---|---|"]
    for name, desc in list_presets().items():
        parent = preset_parent(name)
        rows.append(f"| `{name}` | {f'`{parent}`' if parent else '-'} | {_cell(desc)} |")
    return "\n".join(rows) + "\n"


def _section_tables(prefix: str, model: type[BaseModel], field: FieldInfo) -> list[str]:
    """A heading per section (nested sections and list items get their own), said by the
    field's docstring (a list item: by its class's) and the class docstring's later
    paragraphs."""
    doc = _class_doc(model)
    first = doc[0] if prefix.endswith(".N") and doc else field.description or ""
    out = [f"### `{prefix}`\n", _one_line(first) + "\n"]
    out += [_one_line(p) + "\n" for p in doc[1:]]
    leaves, nested = [], []
    for name, f in model.model_fields.items():
        sub = _section(f)
        item = _list_item(f)
        if sub is not None:
            nested.append((f"{prefix}.{name}", sub, f))
        elif item is not None:
            leaves.append((name, f))
            nested.append((f"{prefix}.{name}.N", item, f))
        else:
            leaves.append((name, f))
    out.append(_table(prefix + ".", leaves))
    for sub_prefix, sub, f in nested:
        out.extend(_section_tables(sub_prefix, sub, f))
    return out


def _leaf_rows(model: type[BaseModel], prefix: str) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    for name, f in model.model_fields.items():
        sub, item = _section(f), _list_item(f)
        if sub is not None:
            groups.extend(_leaf_rows(sub, f"{prefix}{name}."))
            continue
        groups[0].append(prefix + name)
        if item is not None:
            groups.extend(_leaf_rows(item, f"{prefix}{name}.N."))
    return groups


def _table(prefix: str, fields: list[tuple[str, FieldInfo]]) -> str:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, f in fields:
        rows.append(
            f"| `{prefix}{name}` | {_cell(_type(f))} | {_cell(_default(f))} | "
            f"{_cell(_one_line(f.description or ''))} |"
        )
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# Rendering one field
# --------------------------------------------------------------------------------------------


def _section(f: FieldInfo) -> type[BaseModel] | None:
    """The section class of a field that holds one (also ``Section | None``: ``paper``)."""
    ann = f.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else ann
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _list_item(f: FieldInfo) -> type[BaseModel] | None:
    if typing.get_origin(f.annotation) is list:
        (arg,) = typing.get_args(f.annotation)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _type(f: FieldInfo) -> str:
    base = _type_name(f.annotation)
    bounds = _bounds(f)
    return f"{base}, {bounds}" if bounds else base


def _type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is list:
        (arg,) = args
        item = "stage" if isinstance(arg, type) and issubclass(arg, BaseModel) else _type_name(arg)
        return f"list of {item}s"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _bounds(f: FieldInfo) -> str:
    low = high = ""
    for m in f.metadata:
        if isinstance(m, annotated_types.Ge):
            low = f"{m.ge} <="
        elif isinstance(m, annotated_types.Gt):
            low = f"{m.gt} <"
        elif isinstance(m, annotated_types.Le):
            high = f"<= {m.le}"
        elif isinstance(m, annotated_types.Lt):
            high = f"< {m.lt}"
    if low and high:
        return f"{low} x {high}"
    if low:
        n, op = low.split()
        return f"x {'>=' if op == '<=' else '>'} {n}"
    return f"x {high}" if high else ""


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    value = f.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return f"{len(value)} stage{'s' if len(value) > 1 else ''} (defaults below)"
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"`{text}`"


def _class_doc(model: type[BaseModel]) -> list[str]:
    """The paragraphs of a section's docstring."""
    doc = inspect.cleandoc(model.__doc__ or "")
    return [p for p in doc.split("\n\n") if p.strip()]


def _one_line(text: str) -> str:
    """Docstring text as one Markdown line (reST ``code`` becomes `code`)."""
    return " ".join(text.split()).replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text
