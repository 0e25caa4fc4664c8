"""THE checkpoint format, shared by every subcommand.

A run directory (its names are ``fastdino_cli.rundir``'s)::

    runs/x/
      config.yaml            the fully resolved config
      metrics.jsonl          one JSON object per logged step
      checkpoint.pt          latest resumable checkpoint (student, teacher, train_state)
      checkpoints/step_*.pt  periodic copies (the newest ``train.keep_checkpoints`` are kept)
      final.pt               end of training (teacher, student, no train_state)

Every ``.pt`` file is a plain dict written by ``torch.save`` and read with
``torch.load(weights_only=True)``: dicts, lists, strings, numbers and tensors only, never pickled
classes. Top-level keys:

    format, version  "fastdino", integer (a newer version than this code knows is an error;
                     an older one is migrated on load, see ``migrate``)
    config           resolved config as plain data
    arch             what rebuilds the backbone without the config (see ``model/vit.py``)
    teacher          teacher state dict: backbone.*, dino_head.*, ibot_head.*
    student          student state dict (absent in exported / imported checkpoints)
    train_state      ``TrainState``: step, optimizer, loss centres, RNG, ... (resumable only)
    probe            optional linear head(s), class names, feature recipe, clean accuracy
    metrics          optional last logged metrics

Writes go through ``fileio.atomic_write`` (temporary file in the same folder, fsync, rename): a
crash never leaves a half-written checkpoint behind and never destroys the previous one.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastdino_cli.errors import CheckpointError
from fastdino_cli.fileio import atomic_write

FORMAT = "fastdino"
VERSION = 2
"""1: prototype layers hold ``last_layer.weight`` (scale fixed at 1).
2: DINOv2's weight-normed prototype layer, ``last_layer.weight_v`` and ``last_layer.weight_g``."""
ENTRIES = ("config", "arch", "teacher", "student", "train_state", "probe", "metrics")


def make_checkpoint(
    *,
    config: Mapping[str, Any],
    arch: Mapping[str, Any],
    teacher: Mapping[str, torch.Tensor],
    student: Mapping[str, torch.Tensor] | None = None,
    train_state: Mapping[str, Any] | None = None,
    probe: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict in the one format (optional entries are left out when None)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": dict(config),
        "arch": dict(arch),
        "teacher": dict(teacher),
    }
    for key, value in (
        ("student", student),
        ("train_state", train_state),
        ("probe", probe),
        ("metrics", metrics),
    ):
        if value is not None:
            ckpt[key] = dict(value)
    return ckpt


def save(ckpt: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` through the one atomic writer (``fileio.atomic_write``).

    Raises ``CheckpointError`` (leaving any previous file at ``path`` intact) when the write
    fails, e.g. on a full disk or an unwritable folder.
    """
    path = Path(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"refusing to save {path}: not a fastdino checkpoint dict")
    try:
        return atomic_write(path, lambda f: torch.save(dict(ckpt), f))
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e}; the previous file is intact: "
            f"free space or make {path.parent} writable, then run the same command again"
        ) from e


def load(
    path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False
) -> dict[str, Any]:
    """Read a fastdino checkpoint safely (``weights_only=True``) and check its format.

    Every failure is a one-line ``CheckpointError``: missing file, not a torch file, truncated,
    a pickle that would need arbitrary code, a foreign dict, or a newer format version.
    ``mmap``: map the tensors from the file instead of reading them (a zip checkpoint only), for
    a caller that reads a large file several times or needs only some of its tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass a .pt file such as {path}/final.pt")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):  # torch zip, or legacy pickle
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (not a torch.save file); "
            "pass a .pt file written by fastdino"
        )
    try:
        obj = torch.load(
            path, map_location=map_location, weights_only=True, mmap=mmap and magic[:2] == b"PK"
        )
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it references {found.group(1)}" if found else "unsafe content"
        raise CheckpointError(
            f"{path} holds objects that need arbitrary code to load ({what}); fastdino only "
            "loads plain tensors and containers: do not load it unless you trust its source"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = msg.split(". ")[0]  # torch appends advice about miniz internals
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint (truncated or corrupt?): {msg[:160]}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not a fastdino checkpoint (found {keys}); "
            "official DINOv2 weights are converted with `fastdino checkpoint import`"
        )
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r} ({type(version).__name__}), "
            "not a positive integer: it was not written by fastdino or it is damaged"
        )
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this fastdino "
            f"understands ({VERSION}); upgrade fastdino"
        )
    _check_entries(obj, path)
    return migrate(obj)


def _check_entries(obj: Mapping[str, Any], path: Path) -> None:
    """Every entry has the type the format says: ``arch`` and ``teacher`` present, each entry a
    mapping, ``teacher`` / ``student`` mapping names to tensors. Anything else is a foreign or
    damaged file, refused in one line here rather than as an AttributeError deep inside."""
    for key in ("arch", "teacher"):
        if key not in obj:
            raise CheckpointError(f"{path} lacks the {key!r} entry every fastdino checkpoint has")
    for key in ENTRIES:
        value = obj.get(key)
        if key in obj and not isinstance(value, Mapping):
            raise CheckpointError(
                f"{path}: its {key!r} entry is a {type(value).__name__}, not a mapping; "
                "the file is damaged or was not written by fastdino"
            )
    for key in ("teacher", "student"):
        bad = [k for k, v in (obj.get(key) or {}).items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(
                f"{path}: its {key!r} entry holds {type(obj[key][bad[0]]).__name__} at "
                f"{bad[0]!r} where a tensor belongs; the file is damaged or was not written "
                "by fastdino"
            )


# --------------------------------------------------------------------------------------------
# Older format versions, brought up to VERSION in memory on load
# --------------------------------------------------------------------------------------------


def migrate(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` (as read by ``load``) in the current format: each step takes one version to the
    next. The file itself is never rewritten."""
    if ckpt["version"] < 2:
        ckpt = _v1_to_v2(ckpt)
    return ckpt


_V1_LAST_LAYER = re.compile(r"^(.*\blast_layer\.)weight$")


def _v1_to_v2(ckpt: dict[str, Any]) -> dict[str, Any]:
    """v1 prototype layers were ``F.normalize(last_layer.weight)``: DINOv2's weight norm with the
    scale fixed at 1. The weight becomes ``weight_v`` and ``weight_g`` is 1, which computes the
    same logits; the config says ``norm_last_layer: true`` (what that run trained with), so a
    rebuilt model keeps g frozen and the optimizer state, which has no entry for g, still
    matches it. The interpolation settings a v1 config left implicit are those of its arch."""
    ckpt = dict(ckpt)
    for key in ("teacher", "student"):
        state = ckpt.get(key)
        if not isinstance(state, Mapping):
            continue
        out: dict[str, torch.Tensor] = {}
        for name, value in state.items():
            m = _V1_LAST_LAYER.match(name)
            if m:
                out[m.group(1) + "weight_g"] = torch.ones(value.shape[0], 1, dtype=value.dtype)
                out[m.group(1) + "weight_v"] = value
            else:
                out[name] = value
        ckpt[key] = out
    config = ckpt.get("config")
    if isinstance(config, Mapping):
        config = dict(config)
        for section in ("dino", "ibot"):
            part = config.get(section)
            if isinstance(part, Mapping):
                head = dict(part.get("head") or {})
                head["norm_last_layer"] = True
                config[section] = {**part, "head": head}
        model = dict(config.get("model") or {})
        arch = ckpt.get("arch") or {}
        model.setdefault("interpolate_antialias", bool(arch.get("interpolate_antialias", False)))
        model.setdefault("interpolate_offset", float(arch.get("interpolate_offset", 0.1)))
        config["model"] = model
        ckpt["config"] = config
    optimizer = (ckpt.get("train_state") or {}).get("optimizer")
    if isinstance(optimizer, Mapping) and isinstance(optimizer.get("param_groups"), list):
        groups = []
        for group in optimizer["param_groups"]:
            names = group.get("names") if isinstance(group, Mapping) else None
            if isinstance(names, list):
                group = {**group, "names": [_V1_LAST_LAYER.sub(r"\1weight_v", n) for n in names]}
            groups.append(group)
        ckpt["train_state"] = {
            **ckpt["train_state"],
            "optimizer": {**optimizer, "param_groups": groups},
        }
    ckpt["version"] = 2
    return ckpt


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "model"
) -> None:
    """Strict ``load_state_dict`` whose error lists missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise CheckpointError(f"cannot load {what}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def _short(items: list[str], n: int = 8) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)} in all)"


def sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix.`` with the prefix stripped (e.g. ``backbone``)."""
    p = prefix.rstrip(".") + "."
    return {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}


@dataclass
class CheckpointInfo:
    """What ``fastdino checkpoint info`` prints."""

    path: str
    version: int
    preset: str | None
    arch: dict[str, Any]
    step: int | None
    stage: Any
    entries: dict[str, bool]
    num_params: dict[str, int] = field(default_factory=dict)
    file_size: int = 0
    probe: dict[str, Any] | None = None


def inspect(path: str | Path) -> CheckpointInfo:
    """Summarise a checkpoint: version, preset, arch, step/stage, entries and sizes."""
    ckpt = load(path)
    config = ckpt.get("config") or {}
    train_state = ckpt.get("train_state") or {}
    metrics = ckpt.get("metrics") or {}
    step = train_state.get("step", metrics.get("step"))
    stage = train_state.get("stage", metrics.get("stage"))
    num_params = {}
    for key in ("teacher", "student"):
        sd = ckpt.get(key)
        if isinstance(sd, Mapping):
            num_params[key] = int(
                sum(v.numel() for v in sd.values() if isinstance(v, torch.Tensor))
            )
    probe = ckpt.get("probe")
    probe_summary = None
    if isinstance(probe, Mapping):
        probe_summary = {
            k: v for k, v in probe.items() if isinstance(v, str | int | float | bool | type(None))
        }
        if "class_names" in probe:
            probe_summary["num_classes"] = len(probe["class_names"])
    return CheckpointInfo(
        path=str(path),
        version=int(ckpt["version"]),
        preset=config.get("preset") if isinstance(config, Mapping) else None,
        arch=dict(ckpt.get("arch") or {}),
        step=step,
        stage=stage,
        entries={k: k in ckpt for k in ENTRIES},
        num_params=num_params,
        file_size=Path(path).stat().st_size,
        probe=probe_summary,
    )


def load_teacher_backbone(
    path_or_ckpt: str | Path | Mapping[str, Any], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher backbone of a checkpoint, rebuilt from ``ckpt["arch"]``, strictly loaded
    from the ``teacher`` entry's ``backbone.*`` keys, in eval mode on ``device``.

    Accepts a path (read with ``load``) or an already loaded checkpoint dict; returns
    ``(model, ckpt)`` so callers can also read ``config`` / ``probe``.
    """
    from fastdino_cli.model.vit import build_vit_from_arch

    if isinstance(path_or_ckpt, Mapping):
        ckpt, where = dict(path_or_ckpt), "checkpoint"
    else:
        ckpt, where = load(path_or_ckpt), str(path_or_ckpt)
    state = sub_state_dict(ckpt["teacher"], "backbone")
    if not state:
        raise CheckpointError(f"{where} has no teacher backbone.* weights")
    model = build_vit_from_arch(dict(ckpt["arch"]))
    load_state_dict_strict(model, state, what=f"teacher backbone of {where}")
    return model.to(device).eval(), ckpt


# --------------------------------------------------------------------------------------------
# The resumable part: TrainState (the ``train_state`` entry) and RNG states as plain data
# --------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy global and python ``random`` states as plain data (tensors,
    numbers, lists: loadable with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``rng_state``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_REQUIRED_TRAIN_STATE = ("step", "optimizer", "loss", "rng")


@dataclass
class TrainState:
    """Everything beyond the weights that a resumed run needs to continue bit for bit: the
    ``train_state`` entry of a resumable checkpoint, as plain data.

    The sample order and every augmentation are pure functions of (seed, step), so the step is
    the data position; the rest is state that cannot be recomputed. Unknown keys of a newer
    writer are kept (``extra``), and keys older checkpoints lack take their defaults.
    """

    step: int = 0
    """Iterations done (the next one to run)."""
    stage: int = 0
    """Curriculum stage of the last step done (informational: derived from ``step``)."""
    optimizer: dict[str, Any] = field(default_factory=dict)
    """AdamW's ``state_dict`` in the unsharded format (``train/distributed.py``)."""
    scaler: dict[str, Any] | None = None
    """The fp16 grad scaler's state (None: no scaler)."""
    loss: dict[str, Any] = field(default_factory=dict)
    """Loss centres (``SSLMetaArch.loss_state_dict``)."""
    rng: dict[str, Any] = field(default_factory=dict)
    """Rank 0's RNG states (``rng_state``)."""
    data_position: int = 0
    """Images consumed by all ranks (informational: ``step`` x global batch)."""
    bad_steps: int = 0
    """Consecutive non-finite steps before this point (``train.max_bad_steps``)."""
    world_size: int = 1
    """Processes that wrote it (the global batch is per-rank batch x this)."""
    rng_per_rank: list[dict[str, Any]] | None = None
    """Every rank's RNG states, in rank order."""
    extra: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """The ``train_state`` entry (the keys and order every fastdino version wrote)."""
        out = {
            "step": self.step,
            "stage": self.stage,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "loss": self.loss,
            "rng": self.rng,
            "data_position": self.data_position,
            "bad_steps": self.bad_steps,
            "world_size": self.world_size,
            "rng_per_rank": self.rng_per_rank,
        }
        return {**out, **self.extra}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the values of a ``train_state`` entry; ``CheckpointError`` when one it cannot do
        without is missing."""
        missing = [k for k in _REQUIRED_TRAIN_STATE if k not in state]
        if missing:
            raise CheckpointError(
                f"the checkpoint's train_state lacks {', '.join(missing)}: it cannot be resumed"
            )
        known = {f for f in self.__dataclass_fields__ if f != "extra"}
        for key in known:
            if key in state:
                setattr(self, key, state[key])
        self.step, self.stage = int(self.step), int(self.stage)
        self.bad_steps, self.world_size = int(self.bad_steps or 0), int(self.world_size or 1)
        self.extra = {k: v for k, v in state.items() if k not in known}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TrainState:
        out = cls()
        out.load_state_dict(state)
        return out

    def rng_for(self, rank: int, world_size: int) -> dict[str, Any]:
        """The RNG states ``rank`` continues with: its own when the run resumes on as many
        processes as wrote the checkpoint, else rank 0's."""
        per_rank = self.rng_per_rank
        if per_rank is not None and len(per_rank) == world_size:
            return per_rank[rank]
        return self.rng
