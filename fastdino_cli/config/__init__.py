"""Typed configuration, the preset registry and ``key=value`` overrides.

Precedence, lowest to highest::

    schema defaults  <-  preset chain (``extends:``)  <-  --config FILE  <-  key=value overrides

Every section is a pydantic model with ``extra="forbid"``: an unknown key or a bad value is a
``ConfigError`` naming the dotted key and, for typos, the closest valid key. The docstring under
each field is its description; ``fastdino presets reference`` renders them all as
``docs/config.md``.

Only the assemblers see the whole ``Config`` (``train/loop.py``, ``train/build.py``,
``train/plan.py``); everything else receives its own section (``build_vit(cfg.model)``,
``stage_at_step(cfg.curriculum, ...)``).

The package, one concept per module (import from ``fastdino_cli.config``, not the modules):

    base.py       Section: the strict, finite, self-documenting base of every section
    model.py      model.*                      inputs.py   data.*, crops.*
    objective.py  dino.*, ibot.*, heads, train.centering.*, teacher.*
    optim.py      optim.*                      stages.py   curriculum.*
    run.py        train.*, distributed.*       schema.py   Config: the root, cross-section checks
    batch.py      global / per-device batch, epoch in images or iterations, old run keys
    paper.py      paper.*: a paper preset's recipe, and where a run departs from it
    yamlio.py     YAML from users: alias bombs refused, one-line errors
    overrides.py  key=value, validation, did-you-mean
    presets.py    the registry (extends:), resolve_config, YAML round trip
    paths.py      path keys made absolute      plain.py    deep_merge and plain data
    reference.py  docs/config.md from the schema
"""

from fastdino_cli.config.base import Section
from fastdino_cli.config.batch import Batch, restate_stored_run
from fastdino_cli.config.inputs import CropsConfig, DataConfig
from fastdino_cli.config.model import ARCH_NAMES, ModelConfig
from fastdino_cli.config.objective import (
    CenteringConfig,
    DinoConfig,
    HeadConfig,
    IbotConfig,
    TeacherConfig,
)
from fastdino_cli.config.optim import OptimConfig
from fastdino_cli.config.overrides import apply_override, parse_override, validate_config
from fastdino_cli.config.paper import PaperConfig, paper_departures
from fastdino_cli.config.paths import (
    DEMO_DATA_ALIAS,
    PATH_KEYS,
    absolute_path,
    with_absolute_paths,
)
from fastdino_cli.config.plain import deep_merge
from fastdino_cli.config.presets import (
    apply_overrides,
    config_to_yaml,
    list_presets,
    load_config_yaml,
    preset_dir,
    resolve_config,
    run_config_yaml,
)
from fastdino_cli.config.run import DistributedConfig, TrainConfig
from fastdino_cli.config.schema import MAX_ITERATIONS, Config
from fastdino_cli.config.stages import CurriculumConfig, NoisePatchingConfig, StageConfig
from fastdino_cli.config.yamlio import MAX_YAML_VALUES, load_yaml

__all__ = [
    "ARCH_NAMES",
    "Batch",
    "DEMO_DATA_ALIAS",
    "MAX_ITERATIONS",
    "MAX_YAML_VALUES",
    "PATH_KEYS",
    "CenteringConfig",
    "Config",
    "CropsConfig",
    "CurriculumConfig",
    "DataConfig",
    "DinoConfig",
    "DistributedConfig",
    "HeadConfig",
    "IbotConfig",
    "ModelConfig",
    "NoisePatchingConfig",
    "OptimConfig",
    "PaperConfig",
    "Section",
    "StageConfig",
    "TeacherConfig",
    "TrainConfig",
    "absolute_path",
    "apply_override",
    "apply_overrides",
    "config_to_yaml",
    "deep_merge",
    "list_presets",
    "load_config_yaml",
    "load_yaml",
    "paper_departures",
    "parse_override",
    "preset_dir",
    "resolve_config",
    "restate_stored_run",
    "run_config_yaml",
    "validate_config",
    "with_absolute_paths",
]
