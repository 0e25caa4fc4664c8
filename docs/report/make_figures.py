"""Draw the figures of docs/report.md from a real (tiny) three-seed demo.

Usage: python docs/report/make_figures.py [OUT] [--seeds 3]

Runs ``run_demo`` (the library behind ``fastdino demo``) with ``--seeds`` seeds on the demo
data, with a 2-block, 32-dim ViT trained for 40 steps and a cut-down evaluation (8 of the 19
corruptions at severities 1, 3, 5; 16 px Fourier maps), so that it finishes in minutes on a CPU;
then copies the report's interval figures into docs/report/. The numbers illustrate what the
report shows, not how the recipes compare: a model this small, this briefly trained, is barely
past its random initialisation. ``fastdino demo --seeds 3`` gives the real thing.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from fastdino_cli.report.demo import run_demo
from fastdino_cli.report.steps import EvalSettings

DOCS = Path(__file__).resolve().parent
TINY = [
    "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
    "dino.head.n_prototypes=64", "dino.head.hidden_dim=64", "dino.head.bottleneck_dim=32",
    "ibot.head.n_prototypes=64", "ibot.head.hidden_dim=64", "ibot.head.bottleneck_dim=32",
    "crops.local_crops_number=2", "train.batch_size_per_gpu=16", "optim.epochs=10",
    "optim.warmup_epochs=1", "teacher.warmup_temp_epochs=1", "data.num_workers=0",
]  # fmt: skip
CORRUPTIONS = (
    "gaussian_noise,shot_noise,defocus_blur,motion_blur,fog,brightness,contrast,jpeg_compression"
)
FIGURES = ("recipes.png", "differences.png", "corruption_intervals.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="demo_seeds_docs")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    settings = EvalSettings(
        train=out / "data" / "train", val=out / "data" / "val", probe_epochs=10,
        corruptions=CORRUPTIONS, severities="1,3,5", fourier_size=16, fourier_window=9,
        fourier_images_per_class=2, gradcam_per_class=1, workers=0, device="cpu",
    )  # fmt: skip
    t0 = time.perf_counter()
    report = run_demo(
        out, steps_scale=0.08, overrides=TINY, settings=settings, seeds=args.seeds, progress=False
    )  # 10 epochs x epoch_length 4 (50 x 0.08) = 40 steps per run
    print(f"{report} in {time.perf_counter() - t0:.0f} s")
    for name in FIGURES:
        src = report.parent / "figures" / name
        if src.is_file():
            shutil.copyfile(src, DOCS / name)
            print(f"copied {name}")


if __name__ == "__main__":
    main()
