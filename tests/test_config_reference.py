"""docs/config.md is generated from the schema, documents every key, and is current."""

from __future__ import annotations

import types
import typing
from pathlib import Path

from pydantic import BaseModel

from fastdino_cli.cli import main
from fastdino_cli.config import Config, StageConfig
from fastdino_cli.config.reference import count_keys, render_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of the schema, independently of the renderer (``N`` for stage indices)."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if typing.get_origin(ann) is types.UnionType and type(None) in typing.get_args(ann):
            ann = next(a for a in typing.get_args(ann) if a is not type(None))  # paper: X | None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
            if name == "stages":
                out += _keys(StageConfig, f"{prefix}{name}.N.")
    return out


def test_the_page_is_current():
    assert PAGE.read_text() == render_reference(), (
        "docs/config.md is stale: run `fastdino presets reference > docs/config.md`"
    )


def test_every_key_has_a_row_with_type_default_and_a_description():
    text = render_reference()
    keys = _keys(Config)
    assert len(keys) == count_keys() > 100
    rows = {
        ln.split("|")[1].strip().strip("`"): ln for ln in text.splitlines() if ln.startswith("| `")
    }
    for key in keys:
        row = rows.get(key)
        assert row is not None, key
        cells = [c.strip() for c in row.replace("\\|", "/").split("|")[1:-1]]
        assert len(cells) == 4 and all(cells), (key, cells)
        assert len(cells[3]) >= 15, (key, cells[3])  # a sentence, not a stub


def test_types_ranges_and_defaults_are_those_of_the_schema():
    rows = {ln.split("|")[1].strip().strip("`"): ln for ln in render_reference().splitlines()
            if ln.startswith("| `")}  # fmt: skip
    assert "| float, x > 0 | `0.004` |" in rows["optim.base_lr"]
    assert "| float, 0 <= x <= 1 | `0.5` |" in rows["crops.flip_prob"]
    assert "| [float, float] | `[0.32, 1.0]` |" in rows["crops.global_crops_scale"]
    assert "int \\| null, x >= 1 | `null` |" in rows["curriculum.stages.N.global_crops_size"]
    assert "softmax \\| sinkhorn_knopp | `softmax` |" in rows["train.centering.method"]
    assert (
        "`65536`" in rows["dino.head.n_prototypes"] and "`65536`" in rows["ibot.head.n_prototypes"]
    )


def test_every_field_of_every_section_has_a_docstring():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no docstring"
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                yield from walk(ann)
            yield name

    assert len(list(walk(Config))) > 100
    assert list(walk(StageConfig))


def test_the_command_prints_the_page(capsys):
    try:
        main(["presets", "reference"])
    except SystemExit as e:
        assert e.code in (0, None)
    assert capsys.readouterr().out == render_reference()
