"""Converters between the fastdino checkpoint and foreign backbone formats.

One function per foreign format and direction, plus dispatchers (``IMPORTERS`` / ``EXPORTERS``)
that the ``fastdino checkpoint import|export`` commands call:

``dinov2`` (import + export)
    The torch-hub state dict of the official DINOv2 releases (``dinov2_vitb14_pretrain.pth``,
    ``..._reg4_pretrain.pth``): ``cls_token``, ``pos_embed`` (1, 1 + 37*37, D) for 518 px,
    ``register_tokens``, ``mask_token``, ``patch_embed.proj.*``, ``blocks.i.*``, ``norm.*``.
    Training checkpoints name blocks ``blocks.<chunk>.<i>.*`` (``block_chunks``); those are
    unchunked. A DINOv2 ``teacher_checkpoint.pth`` (``{"teacher": {"backbone.*": ...}}``) is
    accepted too; only its backbone is read. The fastdino backbone uses the hub names, so
    export then import is bit-exact.
``timm`` (export)
    safetensors with timm's ``vit_*_dinov2`` keys: ``mask_token`` dropped, SwiGLU ``w12``/``w3``
    renamed ``fc1``/``fc2`` (timm's packed SwiGLU gates the first half, as DINOv2 does); with
    registers ``reg_token``, the CLS position folded into ``cls_token`` and ``pos_embed`` without
    the CLS entry (timm's no_embed_class layout), which computes the same function. The file's
    metadata holds ``timm_kwargs``, the JSON keyword arguments of
    ``timm.models.vision_transformer.VisionTransformer`` that rebuild the backbone (any size,
    ``dynamic_img_size=True``), and ``timm_model`` only where timm has that exact architecture
    (the released DINOv2 shapes). timm resizes the position grid to the exact input grid with
    antialias; a model that interpolates otherwise (offset 0.1, the non-register releases and
    the FastDINOv2 code) is refused unless ``allow_interpolation_mismatch``.

Every import is strict: a key that maps nowhere, a missing key or a wrong shape is a
``CheckpointError`` listing them.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastdino_cli.checkpoint import (
    load_state_dict_strict,
    load_teacher_backbone,
    make_checkpoint,
    save,
    sub_state_dict,
)
from fastdino_cli.config import Config, ModelConfig
from fastdino_cli.errors import CheckpointError
from fastdino_cli.fileio import atomic_write
from fastdino_cli.model.vit import ARCHS, build_vit, interpolate_pos_embed

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_PLAIN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


# --------------------------------------------------------------------------------------------
# Reading foreign files
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    A DINOv2 training ``teacher_checkpoint.pth`` is reduced to its ``backbone.*`` entries.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "unsupported global" in str(e).lower():
                raise CheckpointError(
                    f"{path} holds objects that need arbitrary code to load; "
                    "only plain state dicts of tensors can be imported"
                ) from None
            raise CheckpointError(f"{path} is not a readable torch file (truncated?)") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"{path} is not a readable torch file: {first[:160]}") from None
    if isinstance(obj, Mapping) and obj.get("format") == "fastdino":
        raise CheckpointError(f"{path} is already a fastdino checkpoint; nothing to import")
    if isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping):
        obj = sub_state_dict(obj["teacher"], "backbone")
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    bad = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:8]} are not tensors; not a state dict")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def unchunk_block_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``blocks.<chunk>.<i>.x`` -> ``blocks.<i>.x``; plain names pass through unchanged."""
    chunked = any(_CHUNKED.match(k) for k in state)
    if not chunked:
        return dict(state)
    out = {}
    for k, v in state.items():
        m = _CHUNKED.match(k)
        new = f"blocks.{m.group(2)}.{m.group(3)}" if m else k
        if new in out:
            raise CheckpointError(f"block names collide after unchunking: {new}")
        out[new] = v
    return out


# --------------------------------------------------------------------------------------------
# DINOv2 hub format -> fastdino
# --------------------------------------------------------------------------------------------


_SHAPES = {
    "cls_token": (3, "(1, 1, dim)"),
    "pos_embed": (3, "(1, 1 + grid * grid, dim)"),
    "patch_embed.proj.weight": (4, "(dim, 3, patch, patch)"),
    "register_tokens": (3, "(1, registers, dim)"),
}
"""Keys whose shape ``_describe`` reads: (number of dimensions, the layout of the hub weights)."""


def _describe(state: Mapping[str, Tensor], source: str = "state dict") -> dict[str, Any]:
    """What the hub state dict itself says about the architecture."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    missing = [k for k in need if k not in state]
    if missing:
        found = sorted(state)[:6]
        raise CheckpointError(
            f"not a DINOv2 backbone state dict: missing {missing} (found {found} ...)"
        )
    for key, (ndim, layout) in _SHAPES.items():
        if key in state and state[key].ndim != ndim:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {layout} as in "
                "the DINOv2 hub weights; is this a DINOv2 backbone?"
            )
    grid_tokens = state["pos_embed"].shape[1] - 1
    if grid_tokens < 1 or round(grid_tokens**0.5) ** 2 != grid_tokens:
        raise CheckpointError(
            f"{source}: pos_embed has shape {tuple(state['pos_embed'].shape)}: {grid_tokens} "
            "position tokens after CLS is not a square grid; is this a DINOv2 backbone?"
        )
    blocks = {int(m.group(1)) for k in state if (m := _PLAIN_BLOCK.match(k))}
    regs = state.get("register_tokens")
    return {
        "embed_dim": int(state["cls_token"].shape[-1]),
        "depth": max(blocks) + 1 if blocks else 0,
        "patch_size": int(state["patch_embed.proj.weight"].shape[-1]),
        "num_register_tokens": int(regs.shape[1]) if regs is not None else 0,
        "pos_grid": int(round(grid_tokens**0.5)),
        "ffn": "swiglu" if any(".mlp.w12." in k for k in state) else "mlp",
        "layerscale": any(".ls1.gamma" in k for k in state),
    }


def dinov2_to_fastdino(
    state: Mapping[str, Tensor],
    *,
    arch: str,
    patch_size: int | None = None,
    num_register_tokens: int | None = None,
    img_size: int | None = None,
    interpolate_offset: float | None = None,
    interpolate_antialias: bool | None = None,
    source: str = "state dict",
) -> dict[str, Any]:
    """A fastdino checkpoint (teacher backbone, config, arch) from a hub-layout state dict.

    ``patch_size`` / ``num_register_tokens`` default to what the weights hold and are checked
    against them when given. ``img_size`` defaults to the stored grid x patch (518 for the
    releases); another size resamples the position embedding once, bicubically. Interpolation
    settings default to the releases': offset 0.1 without registers, antialias with them.
    """
    if arch not in ARCHS:
        raise CheckpointError(f"--arch {arch!r} is not one of {', '.join(ARCHS)}")
    state = unchunk_block_names(state)
    info = _describe(state, source)
    table = ARCHS[arch]
    checks = [
        ("width", info["embed_dim"], table["embed_dim"], "--arch"),
        ("blocks", info["depth"], table["depth"], "--arch"),
        ("FFN", info["ffn"], table["ffn"], "--arch"),
        ("patch size", info["patch_size"], patch_size or info["patch_size"], "--patch"),
        (
            "register tokens",
            info["num_register_tokens"],
            info["num_register_tokens"] if num_register_tokens is None else num_register_tokens,
            "--registers",
        ),
    ]
    for what, found, wanted, flag in checks:
        if found != wanted:
            raise CheckpointError(
                f"{source} has {what} {found} but {flag} asks for {wanted}; "
                f"pass the {flag} that matches the weights"
            )
    patch = info["patch_size"]
    regs = info["num_register_tokens"]
    size = img_size or info["pos_grid"] * patch
    cfg = ModelConfig(
        arch=arch,
        patch_size=patch,
        img_size=size,
        num_register_tokens=regs,
        layerscale_init=1.0 if info["layerscale"] else None,
        interpolate_offset=(0.0 if regs else 0.1)
        if interpolate_offset is None
        else interpolate_offset,
        interpolate_antialias=bool(regs)
        if interpolate_antialias is None
        else interpolate_antialias,
    )
    state = dict(state)
    grid = size // patch
    if grid != info["pos_grid"]:
        state["pos_embed"] = interpolate_pos_embed(
            state["pos_embed"],
            (grid, grid),
            antialias=cfg.interpolate_antialias,
            offset=cfg.interpolate_offset,
        )
    model = build_vit(cfg)
    try:
        load_state_dict_strict(model, state, what=f"{source} as {arch}/{patch}")
    except CheckpointError as e:
        raise CheckpointError(f"{e}; is this a DINOv2 backbone?") from None
    teacher = {f"backbone.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    config = Config(model=cfg, description=f"imported from {source}").to_dict()
    return make_checkpoint(config=config, arch=model.arch_dict(), teacher=teacher)


def import_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    arch: str,
    format: str = "dinov2",
    patch_size: int | None = None,
    num_register_tokens: int | None = None,
    img_size: int | None = None,
    force: bool = False,
) -> Path:
    """Convert foreign backbone weights at ``src`` into a fastdino checkpoint at ``out``."""
    if format not in IMPORTERS:
        raise CheckpointError(f"--format {format!r} cannot be imported; use {sorted(IMPORTERS)}")
    out = _check_out(out, force, (".pt",), src)
    state = read_state_dict(src)
    ckpt = IMPORTERS[format](
        state,
        arch=arch,
        patch_size=patch_size,
        num_register_tokens=num_register_tokens,
        img_size=img_size,
        source=Path(src).name,
    )
    return save(ckpt, out)


# --------------------------------------------------------------------------------------------
# fastdino -> foreign formats
# --------------------------------------------------------------------------------------------


def fastdino_to_dinov2(state: Mapping[str, Tensor], arch: Mapping[str, Any]) -> dict[str, Tensor]:
    """Hub layout: the backbone names are already the hub's (plain ``blocks.i``)."""
    return {k: v.contiguous() for k, v in state.items()}


def fastdino_to_timm(state: Mapping[str, Tensor], arch: Mapping[str, Any]) -> dict[str, Tensor]:
    """timm ``vit_*_dinov2`` layout (see the module docstring)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k == "mask_token":
            continue
        k = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", k)
        k = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)
        out[k] = v
    if "register_tokens" in out:
        pos = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:].clone()
    expected = len(state) - 1  # mask_token dropped
    if len(out) != expected:
        raise AssertionError(f"timm export produced {len(out)} keys, expected {expected}")
    return {k: v.contiguous() for k, v in out.items()}


TIMM_DINOV2_SIZES = {
    "vit_small": "small",
    "vit_base": "base",
    "vit_large": "large",
    "vit_giant2": "giant",
}
"""fastdino arch -> the size word of timm's ``vit_{size}_patch14[_reg4]_dinov2`` models."""


def timm_model_name(arch: Mapping[str, Any]) -> str | None:
    """The timm model with exactly this architecture, or None (timm's DINOv2 models are the
    released shapes only: patch 14, the table's width / depth / heads / FFN, LayerScale, 0 or 4
    registers). The image size is not part of it (a constructor argument)."""
    name = str(arch.get("arch"))
    if name not in TIMM_DINOV2_SIZES:
        return None
    table = ARCHS[name]
    regs = int(arch.get("num_register_tokens", 0))
    same = (
        int(arch["patch_size"]) == 14
        and all(arch.get(k) == table[k] for k in ("embed_dim", "depth", "num_heads", "ffn"))
        and float(arch.get("mlp_ratio", 4.0)) == 4.0
        and bool(arch.get("layerscale", True))
        and regs in (0, 4)
    )
    if not same:
        return None
    return f"vit_{TIMM_DINOV2_SIZES[name]}_patch14{'_reg4' if regs else ''}_dinov2"


def timm_interpolation_matches(arch: Mapping[str, Any]) -> bool:
    """Whether timm's position-embedding resize (exact size, bicubic, antialias) is this
    model's: offset 0 and antialias on. Arch entries without the keys predate them (0.1, off)."""
    offset = float(arch.get("interpolate_offset", 0.1))
    return offset == 0.0 and bool(arch.get("interpolate_antialias", False))


def timm_kwargs(arch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe keyword arguments of ``timm.models.vision_transformer.VisionTransformer`` that
    build this backbone with no head, CLS-token output after the final norm (what fastdino's
    ``forward`` returns) and any input size. A SwiGLU FFN is named by its timm class
    (``"mlp_layer": "SwiGLUPacked"``), to be replaced by ``timm.layers.SwiGLUPacked``."""
    dim = int(arch["embed_dim"])
    regs = int(arch.get("num_register_tokens", 0))
    kwargs: dict[str, Any] = {
        "img_size": int(arch["img_size"]),
        "patch_size": int(arch["patch_size"]),
        "embed_dim": dim,
        "depth": int(arch["depth"]),
        "num_heads": int(arch["num_heads"]),
        "mlp_ratio": float(arch.get("mlp_ratio", 4.0)),
        "qkv_bias": True,
        "init_values": (arch.get("layerscale_init") or 1.0) if arch.get("layerscale") else None,
        "class_token": True,
        "reg_tokens": regs,
        "no_embed_class": bool(regs),
        "global_pool": "token",
        "num_classes": 0,
        "dynamic_img_size": True,
    }
    if arch.get("ffn") == "swiglu":
        # timm's packed SwiGLU: fc1 has int(dim * mlp_ratio) = 2 x the gated width
        packed = 2 * int(arch["ffn_hidden_dim"])
        ratio = packed / dim
        if int(dim * ratio) != packed:
            ratio = (packed + 0.5) / dim
        kwargs.update(mlp_ratio=ratio, mlp_layer="SwiGLUPacked", act_layer="silu")
    return kwargs


def _write_pth(tensors: dict[str, Tensor], out: Path, meta: dict[str, str]) -> None:
    atomic_write(out, lambda f: torch.save(tensors, f))


def _write_safetensors(tensors: dict[str, Tensor], out: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    data = save(tensors, metadata=meta)
    atomic_write(out, lambda f: f.write(data))


EXPORTERS: dict[str, tuple[Callable[..., dict[str, Tensor]], Callable[..., None], str]] = {
    "timm": (fastdino_to_timm, _write_safetensors, ".safetensors"),
    "dinov2": (fastdino_to_dinov2, _write_pth, ".pth"),
}
"""format -> (key converter, writer, usual suffix)."""

IMPORTERS: dict[str, Callable[..., dict[str, Any]]] = {"dinov2": dinov2_to_fastdino}
"""format -> converter from a foreign state dict to a fastdino checkpoint."""


def export_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    format: str = "timm",
    force: bool = False,
    allow_interpolation_mismatch: bool = False,
) -> Path:
    """Write the teacher backbone of fastdino checkpoint ``src`` to ``out`` in ``format``.

    ``--format timm`` refuses a model whose position-embedding interpolation timm cannot
    reproduce (it would compute another function off the native grid) unless
    ``allow_interpolation_mismatch``.
    """
    if format not in EXPORTERS:
        raise CheckpointError(f"--format {format!r} is not one of {', '.join(EXPORTERS)}")
    convert, write, suffix = EXPORTERS[format]
    out = _check_out(out, force, (suffix, ".pt", ".bin") if format == "dinov2" else (suffix,), src)
    model, ckpt = load_teacher_backbone(src)
    arch = dict(ckpt["arch"])
    meta = {"format": "pt", "fastdino_arch": json.dumps(arch, sort_keys=True)}
    if format == "timm":
        if not timm_interpolation_matches(arch) and not allow_interpolation_mismatch:
            grid = arch["img_size"] // arch["patch_size"] * arch["patch_size"]
            raise CheckpointError(
                f"{src} interpolates its position embedding with offset "
                f"{arch.get('interpolate_offset', 0.1)} and antialias "
                f"{'on' if arch.get('interpolate_antialias') else 'off'}, which timm cannot "
                f"reproduce: features would differ at inputs other than {grid} px; pass "
                "--allow-interpolation-mismatch to export anyway"
            )
        meta["timm_kwargs"] = json.dumps(timm_kwargs(arch), sort_keys=True)
        name = timm_model_name(arch)
        if name is not None:
            meta["timm_model"] = name
    tensors = convert(model.state_dict(), arch)
    write(tensors, out, meta)
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_out(out: str | Path, force: bool, suffixes: tuple[str, ...], src: str | Path) -> Path:
    """``--out`` as a path to write, refused when it is a folder, when it is the file being
    converted (``--force`` replaces files, never the input), or when it exists without
    ``--force``."""
    out, src = Path(out), Path(src)
    if out.is_dir():
        raise CheckpointError(
            f"--out {out} is a folder; pass a file to write, e.g. {out / ('model' + suffixes[0])}"
        )
    if out.suffix not in suffixes:
        raise CheckpointError(f"--out {out} should end in {' or '.join(suffixes)}")
    if out.exists() and src.exists() and os.path.samefile(out, src):
        raise CheckpointError(
            f"--out {out} is the input {src} itself; write the result to another file "
            "(--force replaces an earlier output, never the file being converted)"
        )
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --force to overwrite it")
    return out
