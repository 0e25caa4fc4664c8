"""Forward+backward throughput and peak memory of the fastdino ViT backbone.

Prints ONE JSON line with the hardware, the date, the settings and, for every attention backend
measured, images/s and peak memory. Multi-crop batches (``--local-res``) exercise the grouped vs
packed attention paths. On CPU the same run also times ``torchvision.models.VisionTransformer``
of the same size on the global crops alone and reports ``ratio_vs_torchvision`` = our time per
step / torchvision's (lower is better).

Examples::

    python benchmarks/backbone.py --arch vit_small --res 224 --batch 8
    python benchmarks/backbone.py --arch vit_base --res 224 --batch 64 --local-res 96 \
        --local-batch 256 --backends sdpa,xformers,varlen --dtype bf16 --device cuda
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine  # noqa: E402
from fastdino_cli.config import ModelConfig  # noqa: E402
from fastdino_cli.model.vit import build_vit, ffn_hidden_dim  # noqa: E402


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, device: torch.device, warmup: int, iters: int) -> tuple[float, float]:
    """Seconds per step and peak memory in MiB (CUDA: allocator peak; CPU: process max RSS)."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    per_step = (time.perf_counter() - start) / iters
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return per_step, peak


def bench_ours(args, device: torch.device, backend: str, local: bool) -> dict:
    cfg = ModelConfig(
        arch=args.arch, patch_size=args.patch, img_size=args.res, drop_path_rate=args.drop_path
    )
    model = build_vit(cfg).to(device).train()
    model.attention = backend
    xs = [torch.randn(args.batch, 3, args.res, args.res, device=device)]
    if local:
        xs.append(torch.randn(args.local_batch, 3, args.local_res, args.local_res, device=device))

    def step() -> None:
        with _autocast(device, args.dtype):
            outs = model.forward_list(xs, [None] * len(xs))
            loss = sum(o.cls.float().mean() + o.patches.float().mean() for o in outs)
        loss.backward()
        model.zero_grad(set_to_none=True)

    per_step, peak = _time_steps(step, device, args.warmup, args.iters)
    images = sum(x.shape[0] for x in xs)
    return {
        "model": "fastdino",
        "attention": backend,
        "groups": [list(x.shape) for x in xs],
        "step_s": round(per_step, 5),
        "images_per_s": round(images / per_step, 2),
        "peak_mem_mib": round(peak, 1),
    }


def bench_torchvision(args, device: torch.device) -> dict:
    from torchvision.models import VisionTransformer

    probe = build_vit(
        ModelConfig(arch=args.arch, patch_size=args.patch, img_size=args.res), device="meta"
    )
    model = VisionTransformer(
        image_size=args.res,
        patch_size=args.patch,
        num_layers=len(probe.blocks),
        num_heads=probe.num_heads,
        hidden_dim=probe.embed_dim,
        mlp_dim=ffn_hidden_dim(probe.embed_dim, probe.mlp_ratio, "mlp"),
    )
    model.heads = nn.Identity()
    model = model.to(device).train()
    x = torch.randn(args.batch, 3, args.res, args.res, device=device)

    def step() -> None:
        with _autocast(device, args.dtype):
            loss = model(x).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    per_step, peak = _time_steps(step, device, args.warmup, args.iters)
    return {
        "model": "torchvision",
        "attention": "nn.MultiheadAttention",
        "groups": [list(x.shape)],
        "step_s": round(per_step, 5),
        "images_per_s": round(args.batch / per_step, 2),
        "peak_mem_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--res", type=int, default=224, help="global crop size")
    p.add_argument("--batch", type=int, default=8, help="global crops per step")
    p.add_argument("--local-res", type=int, default=0, help="local crop size (0: none)")
    p.add_argument("--local-batch", type=int, default=0, help="local crops per step")
    p.add_argument("--backends", default="sdpa", help="comma list: sdpa,dense_mask,xformers,varlen")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--save", action="store_true", help="append to benchmarks/results/")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    local = args.local_res > 0 and args.local_batch > 0
    results = [bench_ours(args, device, b, local) for b in args.backends.split(",") if b]
    if device.type == "cpu":
        # torchvision has no multi-crop path: compare on the global crops alone.
        ours = bench_ours(args, device, "sdpa", local=False) if local else results[0]
        if local:
            results.append(ours)
        tv = bench_torchvision(args, device)
        results.append(tv)
    record = {
        "benchmark": "backbone_fwd_bwd",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": machine(device),
        "settings": {
            k: getattr(args, k)
            for k in ("arch", "patch", "res", "batch", "local_res", "local_batch", "dtype")
        }
        | {"drop_path": args.drop_path, "iters": args.iters},
        "results": results,
    }
    if device.type == "cpu":
        record["ratio_vs_torchvision"] = round(ours["step_s"] / tv["step_s"], 3)
    line = json.dumps(record)
    print(line)
    if args.save:
        out = Path(__file__).parent / "results" / "backbone.jsonl"
        out.parent.mkdir(exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
