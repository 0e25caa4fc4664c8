from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fastdino_cli.config import (
    Config,
    apply_override,
    config_to_yaml,
    list_presets,
    load_config_yaml,
    parse_override,
    resolve_config,
)
from fastdino_cli.errors import ConfigError


def test_every_preset_resolves_and_round_trips():
    names = list_presets()
    for required in (
        "demo",
        "demo-dinov2",
        "vits16-in100",
        "vits16-in100-dinov2",
        "vitb16-in1k",
        "vitb16-in1k-dinov2",
    ):
        assert required in names and names[required]
    for name in names:
        cfg = resolve_config(name)
        assert cfg.preset == name
        again = load_config_yaml(config_to_yaml(cfg))
        assert again == cfg


def test_precedence_defaults_preset_file_overrides(tmp_path):
    assert Config().optim.base_lr == 0.004
    cfg = resolve_config("demo")
    assert cfg.optim.base_lr == 0.002  # demo-dinov2 sets it, demo inherits it
    assert cfg.model.img_size == 32  # demo overrides demo-dinov2's 64
    assert cfg.model.embed_dim == 128  # inherited through extends
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  base_lr: 0.01\ntrain:\n  seed: 7\n")
    cfg = resolve_config("demo", f)
    assert cfg.optim.base_lr == 0.01 and cfg.train.seed == 7
    cfg = resolve_config("demo", f, ["optim.base_lr=1e-3"])
    assert cfg.optim.base_lr == 0.001 and cfg.train.seed == 7


def test_paper_presets_hold_the_recipe():
    fast = resolve_config("vitb16-in1k")
    base = resolve_config("vitb16-in1k-dinov2")
    assert fast.model.arch == base.model.arch == "vit_base"
    assert [s.end for s in fast.curriculum.stages] == [0.75, 1.0]
    s1, s2 = fast.curriculum.stages
    assert (s1.global_crops_size, s1.local_crops_size, s1.schedule_epochs) == (112, 48, 200)
    assert (s2.global_crops_size, s2.local_crops_size) == (224, 96)
    assert s2.restart and s2.warmup_epochs == 5 and s2.noise_patching.enabled
    assert s2.noise_patching.max_sigma == 0.2
    assert fast.optim.epochs == 200 and fast.iterations_per_epoch == 2500
    assert fast.train.epoch_images == 512 * 2500 and fast.train.global_batch == 512
    assert base.model.drop_path_rate == 0.1 and base.batch(4).per_device == 128
    in100 = resolve_config("vits16-in100")
    assert in100.curriculum.stages[1].warmup_epochs == 10
    assert in100.model.img_size == 112
    # the probabilities that actually ran in DINOv2 / FastDINOv2
    c = fast.crops
    assert (c.blur_prob_global1, c.blur_prob_global2, c.blur_prob_local) == (0.0, 0.9, 0.5)
    assert c.solarize_prob_global2 == 0.2


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"optim\.base_rl.*did you mean 'optim\.base_lr'"):
        resolve_config("demo", overrides=["optim.base_rl=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optimm'.*'optim'"):
        resolve_config(overrides=["optimm.base_lr=1"])


def test_unknown_key_in_file_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  archh: vit_base\n")
    with pytest.raises(ConfigError, match=r"model\.archh.*model\.arch"):
        resolve_config(config_file=f)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"optim\.base_lr.*-1"):
        resolve_config(overrides=["optim.base_lr=-1"])
    with pytest.raises(ConfigError, match=r"model\.arch"):
        resolve_config(overrides=["model.arch=vit_huge"])
    with pytest.raises(ConfigError, match="stage ends must increase"):
        resolve_config("demo", overrides=["curriculum.stages.1.end=0.5"])
    with pytest.raises(ConfigError, match="out of range"):
        resolve_config("demo", overrides=["curriculum.stages.5.end=0.5"])
    with pytest.raises(ConfigError, match="unknown preset 'demoo'.*'demo'"):
        resolve_config("demoo")
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config(overrides=["optim.base_lr"])


def test_override_values_are_yaml_typed():
    assert parse_override("optim.base_lr=1e-3") == ("optim.base_lr", 0.001)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("data.train=/x/y") == ("data.train", "/x/y")
    cfg = resolve_config("demo", overrides=["curriculum.stages.0.global_crops_size=40"])
    assert cfg.curriculum.stages[0].global_crops_size == 40
    cfg = resolve_config(overrides=["crops.blur_sigma=[0.2, 3]"])
    assert cfg.crops.blur_sigma == (0.2, 3.0)


def test_apply_override_does_not_mutate_input():
    data = {"optim": {"base_lr": 1.0}}
    out = apply_override(data, "optim.base_lr", 2.0)
    assert data["optim"]["base_lr"] == 1.0 and out["optim"]["base_lr"] == 2.0


def test_yaml_output_is_plain():
    text = config_to_yaml(resolve_config("vitb16-in1k"))
    data = yaml.safe_load(text)
    assert data["preset"] == "vitb16-in1k"
    assert data["crops"]["global_crops_scale"] == [0.32, 1.0]


def _float_keys(model, prefix=""):
    """Every float-valued leaf of the schema (floats inside tuples too), as dotted keys."""
    import types
    import typing

    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():
        inner = field.annotation
        if typing.get_origin(inner) in (typing.Union, types.UnionType):  # X | None
            inner = next(a for a in typing.get_args(inner) if a is not type(None))
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            out += _float_keys(inner, f"{prefix}{name}.")
        elif inner is float:
            out.append(f"{prefix}{name}")
        elif typing.get_origin(inner) is tuple and float in typing.get_args(inner):
            out.append(f"{prefix}{name}.0")
    return out


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan", "1e400"])
def test_no_float_anywhere_accepts_inf_or_nan(value):
    """One rule on the base section (pydantic ``allow_inf_nan=False``) covers every field."""
    keys = _float_keys(Config)
    assert {"optim.base_lr", "optim.epochs", "crops.global_crops_scale.0"} <= set(keys)
    assert len(keys) > 40
    for key in keys:
        if key.endswith(".0"):  # a tuple: replace one element
            base = key[:-2]
            section, name = base.split(".")
            current = list(getattr(getattr(Config(), section), name))
            override = f"{base}=[{value}, {', '.join(map(str, current[1:]))}]"
        else:
            override = f"{key}={value}"
        with pytest.raises(ConfigError) as e:
            resolve_config("demo", overrides=[override])
        message = str(e.value)
        assert key in message and "finite" in message, (override, message)


def test_stage_floats_are_checked_too():
    with pytest.raises(ConfigError, match=r"curriculum\.stages\.1\.warmup_epochs.*finite"):
        resolve_config("demo", overrides=["curriculum.stages.1.warmup_epochs=.inf"])


def test_a_run_length_that_overflows_is_a_config_error():
    with pytest.raises(ConfigError, match=r"optim\.epochs=1e\+306.*lower optim\.epochs"):
        resolve_config("demo", overrides=["optim.epochs=1e306"])


def test_paths_become_absolute_and_the_demo_keyword_stays(tmp_path, monkeypatch):
    from fastdino_cli.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = resolve_config("demo", overrides=["data.train=data/../data/train", "train.output_dir=r"])
    absolute = with_absolute_paths(cfg)
    assert absolute.data.train == str(tmp_path / "data" / "train")
    assert absolute.train.output_dir == str(tmp_path / "r")
    keyword = with_absolute_paths(resolve_config("demo", overrides=["data.train=demo"]))
    assert keyword.data.train == "demo"
    home = with_absolute_paths(resolve_config("demo", overrides=["data.train=~/x"]))
    assert home.data.train == str(Path.home() / "x")
    assert with_absolute_paths(absolute) == absolute


# --------------------------------------------------------------------------------------------
# YAML aliases (issue 17 item 7) and crop sizes (item 16)
# --------------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """A config whose aliases expand to ``width ** levels`` strings (9 ** 9 = 387 million)."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    """Bounded in time by construction: the check visits each of the ~90 nodes once, so the
    9-level document costs what a 1-level one does (no copy, no validation of 387M values)."""
    from fastdino_cli.config import MAX_YAML_VALUES, load_yaml

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    with pytest.raises(ConfigError) as e:
        resolve_config("demo", bomb)
    message = str(e.value)
    assert str(bomb) in message and "aliases expand to more than" in message
    sizes = [1 + 9]  # l0: a list of 9 strings; l_i: a list of 9 copies of l_(i-1)
    for _ in range(8):
        sizes.append(1 + 9 * sizes[-1])
    expanded = 1 + sum(1 + n for n in sizes)  # the mapping, and each key with its list
    assert "\n" not in message and f"({expanded:.3g})" in message
    with pytest.raises(ConfigError, match="override crops.mean: its YAML aliases"):
        parse_override("crops.mean=" + billion_laughs(4, 20).replace("\n", ", ").join("{}"))
    # just under the bound is read: the limit is about size, not about aliases
    width = int(MAX_YAML_VALUES**0.5) - 2
    assert len(load_yaml(billion_laughs(2, width), "ok")["l1"]) == width


def test_a_recursive_alias_is_refused(tmp_path):
    f = tmp_path / "loop.yaml"
    f.write_text("crops:\n  mean: &m [0.1, *m]\n")
    with pytest.raises(ConfigError, match=rf"{f}: a YAML alias refers to the list or mapping"):
        resolve_config(config_file=f)


def test_ordinary_aliases_still_work(tmp_path):
    f = tmp_path / "shared.yaml"
    f.write_text(
        "curriculum:\n  stages:\n"
        "  - {end: 0.5, noise_patching: &noise {enabled: true, max_sigma: 0.1}}\n"
        "  - {end: 1.0, noise_patching: *noise}\n"
    )
    cfg = resolve_config("demo", f)
    assert [s.noise_patching.max_sigma for s in cfg.curriculum.stages] == [0.1, 0.1]


def test_a_global_crop_smaller_than_the_local_crop_is_refused():
    with pytest.raises(ConfigError) as e:
        resolve_config(overrides=["crops.global_crops_size=64"])  # local stays 96
    assert "crops.global_crops_size=64 is smaller than crops.local_crops_size=96" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve_config("demo", overrides=["curriculum.stages.1.local_crops_size=80"])
    assert (
        "curriculum.stages.1.global_crops_size=64 is smaller than "
        "curriculum.stages.1.local_crops_size=80" in str(e.value)
    )
    two = "curriculum.stages=[{end: 0.5, global_crops_size: 128}, {end: 1.0}]"
    with pytest.raises(ConfigError, match=r"crops\.local_crops_size=96 in stage 1"):
        resolve_config(overrides=["crops.global_crops_size=64", two])
    # equal sizes, no local crops at all, and crops.* values that every stage overrides: valid
    assert resolve_config(overrides=["crops.global_crops_size=96"]).crops.global_crops_size == 96
    assert resolve_config(overrides=["crops.global_crops_size=64", "crops.local_crops_number=0"])
    assert resolve_config("vits16-in100-dinov2", overrides=["crops.local_crops_size=256"])
