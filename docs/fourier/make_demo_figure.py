"""Rebuild the Fourier heatmap figures of docs/fourier.md from the demo data (CPU, minutes).

No trained checkpoint exists in this repository yet, so the two models are RANDOM-INIT tiny
ViTs (patch 8 and patch 16, 64 px) with a linear probe trained on their frozen features: the
figure shows what the tool draws, not what pretraining buys.

    python docs/fourier/make_demo_figure.py [WORK_DIR]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fastdino_cli import checkpoint as ck  # noqa: E402
from fastdino_cli.config import ModelConfig  # noqa: E402
from fastdino_cli.data.demo import build_demo_dataset  # noqa: E402
from fastdino_cli.eval.fourier.run import run_fourier_heatmaps  # noqa: E402
from fastdino_cli.eval.probe.run import run_probe  # noqa: E402
from fastdino_cli.figures.fourier import draw_fourier_run  # noqa: E402
from fastdino_cli.model.vit import build_vit  # noqa: E402


def random_init_checkpoint(path: Path, patch: int) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="vit_tiny", patch_size=patch, img_size=64, depth=4)
    model = build_vit(cfg)
    teacher = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    config = {"model": cfg.model_dump(mode="python"), "crops": {"global_crops_size": 64}}
    return ck.save(ck.make_checkpoint(config=config, arch=model.arch_dict(), teacher=teacher), path)


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fastdino-fourier-demo")
    data = build_demo_dataset(work / "demo-data", size=64)
    ckpts = [
        random_init_checkpoint(work / f"random-init-vit-tiny-p{p}" / "final.pt", p) for p in (8, 16)
    ]
    run_probe(ckpts, data.train, data.val, ks=(10,), epochs=30, n_last_blocks=(1,), crop=64)
    run = run_fourier_heatmaps(
        ckpts, data.val, work / "fourier", window=31, images_per_class=5, radial=True, seed=0
    )
    draw_fourier_run(run)
    dest = Path(__file__).resolve().parent
    shutil.copy(run.out / "side_by_side.png", dest / "demo_side_by_side.png")
    shutil.copy(run.out / "radial.png", dest / "demo_radial.png")
    shutil.copy(run.out / "summary.json", dest / "demo_summary.json")
    for label, res in zip(run.labels, run.results, strict=True):
        print(label, f"clean error {res.clean_error:.3f}", f"mean error {res.error.mean():.3f}")


if __name__ == "__main__":
    main()
