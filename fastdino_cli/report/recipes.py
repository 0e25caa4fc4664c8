"""Which runs are seeds of the same recipe: the preset and the resolved config, seed excluded.

A recipe is what a user chose to train: the preset and every override, i.e. the resolved
``config.yaml`` of the run read back through the config owner (``report.read``), with its
relative paths made absolute by the run-directory owner (``rundir.resolve_stored_paths``). Two
runs are the same recipe when those agree on every key except ``train.seed`` and the keys that
only drive a run (``rundir.RUN_CONTROL_KEYS``: output folder, logging, workers, ...); the preset
name counts. Any other override (a learning rate, a crop size) makes another recipe. A run
without a readable config is a recipe of its own.

The first run's recipe is the baseline of every difference; recipes keep the order in which
their first run was given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fastdino_cli.report.read import RunData
from fastdino_cli.rundir import RUN_CONTROL_KEYS, flatten, resolve_stored_paths

SEED_KEY = "train.seed"
"""The one key that tells seeds of a recipe apart."""
_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$")


@dataclass
class Recipe:
    """Runs that differ only in their seed."""

    name: str
    preset: str
    settings: dict[str, Any] | None
    """Dotted key -> value of the resolved config, seed and run-control keys excluded (None:
    no readable config)."""
    runs: list[RunData] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [run_seed(r) for r in self.runs]


def run_seed(run: RunData) -> int | None:
    """``train.seed`` of the run's config (None without one)."""
    return int(run.config.train.seed) if run.config is not None else None


def recipe_settings(run: RunData) -> dict[str, Any] | None:
    """The keys that define the run's recipe (see the module docstring)."""
    if run.config is None:
        return None
    data = resolve_stored_paths(run.run_dir, run.config.to_dict())
    flat = flatten(data)
    dropped = (set(RUN_CONTROL_KEYS) - {"preset"}) | {SEED_KEY}
    return {k: v for k, v in flat.items() if k not in dropped}


def _identity(run: RunData, settings: dict[str, Any] | None) -> str:
    if settings is None:
        return f"run:{run.run_dir}"
    return json.dumps(settings, sort_keys=True, default=str)


def recipe_name(labels: list[str], taken: set[str]) -> str:
    """The first run's label without a trailing seed suffix (``dinov2-seed1`` -> ``dinov2``),
    or the label itself where that name is empty or already another recipe's."""
    first = labels[0]
    stripped = _SEED_SUFFIX.sub("", first)
    for name in (stripped, first):
        if name and name not in taken:
            return name
    i = 2
    while f"{first}#{i}" in taken:
        i += 1
    return f"{first}#{i}"


def group_recipes(runs: list[RunData]) -> list[Recipe]:
    """The runs grouped by recipe, in the order of each recipe's first run."""
    groups: dict[str, tuple[dict[str, Any] | None, list[RunData]]] = {}
    for run in runs:
        settings = recipe_settings(run)
        groups.setdefault(_identity(run, settings), (settings, []))[1].append(run)
    recipes: list[Recipe] = []
    taken: set[str] = set()
    for settings, members in groups.values():
        name = recipe_name([r.label for r in members], taken)
        taken.add(name)
        recipes.append(Recipe(name, members[0].preset, settings, members))
    return recipes


def separating_keys(recipes: list[Recipe]) -> list[str]:
    """Config keys whose value is not the same in every recipe (what tells them apart)."""
    known = [r.settings for r in recipes if r.settings is not None]
    if len(known) < 2:
        return []
    keys = sorted(set().union(*known))
    return [k for k in keys if len({repr(s.get(k, "<unset>")) for s in known}) > 1]


def has_seeds(recipes: list[Recipe]) -> bool:
    """Whether some recipe has more than one run (intervals can be shown)."""
    return any(len(r.runs) > 1 for r in recipes)
