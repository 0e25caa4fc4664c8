"""THE checkpoint format, shared by every subcommand.

A run directory::

    runs/x/
      config.yaml            the fully resolved config
      metrics.jsonl          one JSON object per logged step
      checkpoint.pt          latest resumable checkpoint (student, teacher, train_state)
      checkpoints/step_*.pt  periodic copies (the newest ``train.keep_checkpoints`` are kept)
      final.pt               end of training (teacher, student, no train_state)

Every ``.pt`` file is a plain dict written by ``torch.save`` and read with
``torch.load(weights_only=True)``: dicts, lists, strings, numbers and tensors only, never pickled
classes. Top-level keys:

    format, version  "fastdino", integer (a newer version than this code knows is an error)
    config           resolved config as plain data
    arch             what rebuilds the backbone without the config (see ``model/vit.py``)
    teacher          teacher state dict: backbone.*, dino_head.*, ibot_head.*
    student          student state dict (absent in exported / imported checkpoints)
    train_state      step, stage, optimizer, loss centers, RNG, data position (resumable only)
    probe            optional linear head(s), class names, feature recipe, clean accuracy
    metrics          optional last logged metrics

Writes go through ``fileio.atomic_write`` (temporary file in the same folder, fsync, rename): a
crash never leaves a half-written checkpoint behind and never destroys the previous one.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdino_cli.errors import CheckpointError
from fastdino_cli.fileio import atomic_write

FORMAT = "fastdino"
VERSION = 1
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


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a fastdino checkpoint safely (``weights_only=True``) and check its format.

    Every failure is a one-line ``CheckpointError``: missing file, not a torch file, truncated,
    a pickle that would need arbitrary code, a foreign dict, or a newer format version.
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
        obj = torch.load(path, map_location=map_location, weights_only=True)
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
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this fastdino "
            f"understands ({VERSION}); upgrade fastdino"
        )
    for key in ("arch", "teacher"):
        if key not in obj:
            raise CheckpointError(f"{path} lacks the {key!r} entry every fastdino checkpoint has")
    return obj


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
