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

    format, version  "fastdino", integer (a newer version than this code knows is an error;
                     an older one is migrated on load, see ``migrate``)
    config           resolved config as plain data
    arch             what rebuilds the backbone without the config (see ``model/vit.py``)
    teacher          teacher state dict: backbone.*, dino_head.*, ibot_head.*
    student          student state dict (absent in exported / imported checkpoints)
    train_state      step, stage, optimizer, loss centers, RNG, data position (resumable only)
    probe            optional linear head(s), class names, feature recipe, clean accuracy
    metrics          optional last logged metrics

Writes are atomic: a temporary file in the same folder, fsync, then ``os.replace``; a crash never
leaves a half-written checkpoint behind and never destroys the previous one.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastdino_cli.errors import CheckpointError

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
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    Raises ``CheckpointError`` (leaving any previous file at ``path`` intact) when the write
    fails, e.g. on a full disk or an unwritable folder.
    """
    path = Path(path)
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"refusing to save {path}: not a fastdino checkpoint dict")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e}; make {path.parent} writable "
            "or choose another output"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(ckpt), f)
            f.flush()
            _maybe_die_for_tests(f)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        cause = _os_error_in(e)
        if cause is not None:
            raise CheckpointError(
                f"cannot write checkpoint {path}: {cause.strerror or cause}; the previous file is "
                "intact: free space or fix permissions, then run the same command again"
            ) from e
        raise
    return path


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch's zip writer turns a full disk into a RuntimeError."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


_saves_in_process = 0


def _maybe_die_for_tests(f) -> None:
    """Fault injection for ``tests/test_crash_consistency.py``, inert unless the variable is set.

    ``FASTDINO_TEST_KILL_IN_SAVE=N`` SIGKILLs this process during its N-th ``save``, after the
    temp file is half written and before the rename: exactly what a crash mid-write leaves.
    """
    global _saves_in_process
    target = os.environ.get("FASTDINO_TEST_KILL_IN_SAVE")
    if not target:
        return
    _saves_in_process += 1
    if _saves_in_process == int(target):
        f.truncate(max(1, f.tell() // 2))
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    return migrate(obj)


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
