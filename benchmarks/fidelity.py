"""Numerical effect of the paper presets' deliberate settings (issue 19), on CPU.

Usage: python benchmarks/fidelity.py [--out FILE]
Prints one JSON line:

* ``head_precision``: the paper head (in 384, hidden 2048, bottleneck 256, K = 65536) under bf16
  autocast, teacher temperature 0.04. Relative error of the teacher's top probability and max
  absolute error of all probabilities against fp32, for the old path (prototype layer in bf16)
  and the current one (MLP in bf16, prototype layer and softmax in fp32); at init and with
  trained-like features (each nearer one prototype, cosine ~0.45: top probability ~0.5).
* ``interpolation``: a smooth (2-D sin-cos) position grid of the ViT-S/16 presets (7x7, width
  384) resized to the grids the curriculum uses (3x3, 6x6, 14x14) by the FastDINOv2 code's
  setting (offset 0.1, no antialias) and by fastdino's (antialias, offset 0): RMS difference
  relative to the grid's RMS.
* ``timm_export`` (only with timm installed): the demo architecture with a trained-magnitude
  position grid, exported to timm; max |feature difference| fastdino vs timm at 32 (native),
  64 and 224 px for both settings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.config import resolve_config  # noqa: E402
from fastdino_cli.model.heads import DinoHead  # noqa: E402
from fastdino_cli.model.vit import build_vit, interpolate_pos_embed  # noqa: E402


def _probs(logits: torch.Tensor, temp: float = 0.04) -> torch.Tensor:
    return F.softmax(logits.float() / temp, dim=-1)


@torch.no_grad()
def head_precision(n: int = 64) -> dict:
    torch.manual_seed(0)
    head = DinoHead(384, n_prototypes=65536, bottleneck_dim=256, hidden_dim=2048)
    out = {}
    for case in ("init", "trained_like"):
        x = torch.randn(n, 384)
        if case == "trained_like":  # bottleneck outputs nearer one prototype: peaky targets
            v = F.normalize(head.last_layer.weight_v[torch.randint(0, 65536, (n,))], dim=-1)
            bottleneck = v + 2.0 * torch.randn(n, 256) / 16  # cosine ~0.45 to it
        else:
            bottleneck = head.mlp(x)
        w = head.last_layer.prototypes()
        ref = _probs(F.normalize(bottleneck, dim=-1) @ w.T)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # old: the layer under autocast
            old = _probs(F.linear(F.normalize(bottleneck.bfloat16(), dim=-1), w))
        new = _probs(F.normalize(bottleneck.bfloat16().float(), dim=-1) @ w.T)
        top = ref.argmax(-1, keepdim=True)
        row = {}
        for name, p in (("bf16_prototypes", old), ("fp32_prototypes", new)):
            rel = (p.gather(1, top) - ref.gather(1, top)).abs() / ref.gather(1, top)
            row[name] = {
                "top_prob_rel_err_max": round(float(rel.max()), 5),
                "top_prob_rel_err_mean": round(float(rel.mean()), 5),
                "prob_abs_err_max": float(f"{float((p - ref).abs().max()):.3g}"),
            }
        row["top_prob_mean"] = round(float(ref.gather(1, top).mean()), 4)
        out[case] = row
    return out


def sincos_grid(side: int, dim: int) -> torch.Tensor:
    """(1, 1 + side*side, dim) 2-D sin-cos position embedding (smooth, like learned ones)."""
    coords = torch.arange(side, dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for c in (yy.flatten(), xx.flatten()):
        ang = c[:, None] * omega[None]
        parts += [ang.sin(), ang.cos()]
    grid = torch.cat(parts, dim=1).float()
    return torch.cat([torch.zeros(1, dim), grid])[None]


def interpolation() -> dict:
    pe = sincos_grid(7, 384)
    scale = float(pe[:, 1:].pow(2).mean().sqrt())
    out = {}
    for side in (3, 6, 14):
        legacy = interpolate_pos_embed(pe, (side, side), antialias=False, offset=0.1)
        ours = interpolate_pos_embed(pe, (side, side), antialias=True, offset=0.0)
        diff = float((legacy - ours)[:, 1:].pow(2).mean().sqrt()) / scale
        out[f"7x7_to_{side}x{side}_rel_rms_diff"] = round(diff, 4)
    return out


@torch.no_grad()
def timm_export() -> dict | None:
    try:
        import timm  # noqa: F401
    except ImportError:
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastdino_cli import checkpoint as ck
    from fastdino_cli.interop import export_checkpoint

    out = {}
    for name, (offset, aa) in {"fastdinov2_code": (0.1, False), "fastdino": (0.0, True)}.items():
        cfg = resolve_config("demo").model.model_copy(
            update={"interpolate_offset": offset, "interpolate_antialias": aa}
        )
        torch.manual_seed(0)
        model = build_vit(cfg).eval()
        model.pos_embed.normal_(0.0, 1.0)
        teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            src = ck.save(
                ck.make_checkpoint(config={}, arch=model.arch_dict(), teacher=teacher),
                Path(tmp) / "m.pt",
            )
            dst = export_checkpoint(
                src, Path(tmp) / "m.safetensors", allow_interpolation_mismatch=True
            )
            kwargs = json.loads(safe_open(str(dst), "pt").metadata()["timm_kwargs"])
            theirs = timm.models.vision_transformer.VisionTransformer(**kwargs).eval()
            theirs.load_state_dict(load_file(str(dst)))
        row = {}
        for size in (32, 64, 224):
            x = torch.randn(4, 3, size, size)
            row[f"{size}px_max_abs_diff"] = float(
                f"{float((model(x) - theirs(x)).abs().max()):.3g}"
            )
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    line = {
        "benchmark": "fidelity",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hardware": machine("cpu"),
        "head_precision": head_precision(),
        "interpolation": interpolation(),
        "timm_export": timm_export(),
    }
    emit(line, args.out)


if __name__ == "__main__":
    main()
