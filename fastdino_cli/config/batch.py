"""The batch and the epoch of a run, on any number of processes.

Why: DINOv2 and the FastDINOv2 code state the batch PER GPU, so their recipes silently change
with the GPU count: the 4-GPU ImageNet-100 recipe (10 per GPU) run on one GPU trains with a
global batch of 10, a quarter of the images per "epoch" and half the learning rate. fastdino
states the GLOBAL batch (``train.global_batch``) and, in the paper presets, an epoch in images
(``train.epoch_images``); the per-device batch and the iterations follow from them and the world
size, so a preset means the same recipe on 1, 4 or 8 GPUs.

Each of the two pairs of keys states one thing two ways; exactly one key of a pair is set:

    batch:  train.global_batch (images per step, all processes)  | train.batch_size_per_gpu
    epoch:  train.epoch_images (images per epoch)                | train.epoch_length (iterations)

A layer of the config (a preset, ``--config`` file, an override) that sets one key of a pair
clears the other (``clear_partners``), and a section that names only one gets the other as
null (``fill_partners``): that is also how runs stored before ``global_batch`` existed (only
``batch_size_per_gpu`` and ``epoch_length``) still load. ``restate_stored_run`` restates such a
stored config in the new keys when it computes the same run, so it resumes without
``--force-config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastdino_cli.errors import ConfigError

if TYPE_CHECKING:
    from fastdino_cli.config.run import TrainConfig
    from fastdino_cli.config.schema import Config

BATCH_KEYS = ("global_batch", "batch_size_per_gpu")
EPOCH_KEYS = ("epoch_images", "epoch_length")
PAIRS = (BATCH_KEYS, EPOCH_KEYS)


def _partner(key: str) -> str | None:
    for a, b in PAIRS:
        if key == a:
            return b
        if key == b:
            return a
    return None


def fill_partners(train: Any) -> Any:
    """A ``train`` section (plain data) where each pair names one key gets the other as null,
    so a section that says ``batch_size_per_gpu: 10`` is not also given the default global
    batch. Anything but a mapping is returned as it is (validation reports it)."""
    if not isinstance(train, dict):
        return train
    out = dict(train)
    for a, b in PAIRS:
        if out.get(a) is not None and b not in out:
            out[b] = None
        elif out.get(b) is not None and a not in out:
            out[a] = None
    return out


def clear_partners(data: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``data`` (already merged with ``layer``) with the partner of every pair key that
    ``layer`` sets (not null) cleared: the later layer states the batch or the epoch, whichever
    way it names it (``train.batch_size_per_gpu=4`` on a preset that states
    ``train.global_batch``)."""
    set_here = layer.get("train") if isinstance(layer.get("train"), dict) else {}
    train = data.get("train")
    if not set_here or not isinstance(train, dict):
        return data
    train = dict(train)
    for key, value in set_here.items():
        partner = _partner(key)
        if partner is not None and value is not None and partner not in set_here:
            train[partner] = None
    return {**data, "train": train}


def clear_partner_of_override(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``clear_partners`` for one dotted ``key=value`` override already applied to ``data``."""
    section, _, name = key.partition(".")
    if section != "train" or "." in name:
        return data
    return clear_partners(data, {"train": {name: value}})


def check_batch_keys(train: TrainConfig) -> None:
    """Exactly one key of each pair is set, and a world-size-dependent batch is not combined
    with an epoch in images (its iterations would change with the number of GPUs)."""
    for a, b in PAIRS:
        va, vb = getattr(train, a), getattr(train, b)
        if va is not None and vb is not None:
            raise ValueError(
                f"train.{a}={va} and train.{b}={vb} both state the "
                f"{'batch' if a == 'global_batch' else 'epoch'}; set one of them (the other to "
                "null)"
            )
        if va is None and vb is None:
            raise ValueError(f"train.{a} and train.{b} are both null; set one of them")
    if train.batch_size_per_gpu is not None and train.epoch_images is not None:
        raise ValueError(
            f"train.batch_size_per_gpu={train.batch_size_per_gpu} with train.epoch_images="
            f"{train.epoch_images}: the iterations of an epoch would change with the number of "
            "GPUs; set train.global_batch instead (per-GPU batch x GPUs), or state the epoch "
            "in iterations (train.epoch_length)"
        )


@dataclass(frozen=True)
class Batch:
    """The batch of one run on ``world_size`` processes."""

    global_batch: int
    """Images per optimizer step, all processes together (what the learning rate is scaled
    for and the sample order is a function of)."""
    per_device: int
    world_size: int


def batch_for_world(train: TrainConfig, world_size: int) -> Batch:
    """The global and per-device batch of ``train`` on ``world_size`` processes; an
    indivisible global batch is a one-line ``ConfigError`` saying what to do."""
    if world_size < 1:
        raise ConfigError(f"the number of GPUs must be at least 1, got {world_size}")
    if train.global_batch is None:
        assert train.batch_size_per_gpu is not None  # check_batch_keys
        per = train.batch_size_per_gpu
        return Batch(per * world_size, per, world_size)
    g = train.global_batch
    if g % world_size:
        fits = [n for n in range(1, min(g, 64) + 1) if g % n == 0]
        lower, upper = g - g % world_size, g + world_size - g % world_size
        near = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(
            f"train.global_batch={g} does not divide over {world_size} GPUs: run on a number "
            f"of GPUs that divides it ({', '.join(map(str, fits))}), or set "
            f"train.global_batch to a multiple of {world_size} (e.g. {near}), which departs "
            "from a paper preset's recipe"
        )
    return Batch(g, g // world_size, world_size)


def iterations_per_epoch(train: TrainConfig) -> int:
    """Iterations of one "epoch": ``epoch_length``, or ``epoch_images / global_batch`` rounded
    (at least 1). Independent of the world size (``check_batch_keys``)."""
    if train.epoch_length is not None:
        return train.epoch_length
    assert train.epoch_images is not None and train.global_batch is not None
    return max(1, round(train.epoch_images / train.global_batch))


def restate_stored_run(
    old: dict[str, Any], saved_world: int, new: Config, world_size: int
) -> dict[str, Any]:
    """A stored run's config (plain data, from any version) restated in ``new``'s keys where
    both compute the same run: the same global batch (whatever the world sizes and however each
    names it) and the same iterations and images per epoch. What differs is left as stored, so
    the resume check still reports it. A stored config without a ``paper`` section takes
    ``new``'s (it records the reference, not what the run computes)."""
    from pydantic import ValidationError

    from fastdino_cli.config.run import TrainConfig

    out = dict(old)
    raw = old.get("train")
    if isinstance(raw, dict):
        try:
            stored = TrainConfig.model_validate(fill_partners(raw))
            was = batch_for_world(stored, saved_world)
            now = batch_for_world(new.train, world_size)
        except (ValidationError, ConfigError):
            stored = None
        if stored is not None and was.global_batch == now.global_batch:
            train = dict(raw)
            for key in BATCH_KEYS:
                train[key] = getattr(new.train, key)
            if iterations_per_epoch(stored) == iterations_per_epoch(new.train):
                for key in EPOCH_KEYS:
                    train[key] = getattr(new.train, key)
            out["train"] = train
    if "paper" not in out:
        out["paper"] = new.to_dict().get("paper")
    return out
