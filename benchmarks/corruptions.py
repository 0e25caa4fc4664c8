"""Speed of the 19 ImageNet-C corruptions at 224 px, and glass blur vs a direct loop port.

Prints one JSON line: ms per image per corruption (median over repeats, mean over the five
severities, one thread), and for glass blur the time of our vectorised shuffle against the
original's per-pixel Python loop on the same random draws (asserting identical output).

    python benchmarks/corruptions.py [--repeats 5] [--size 224] [--out results/corruptions.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import emit, machine, median_ms  # noqa: E402
from fastdino_cli.eval.corruption.blur import (  # noqa: E402
    GLASS_BLUR,
    glass_offsets,
    glass_shuffle,
    glass_shuffle_loop,
)
from fastdino_cli.eval.corruption.registry import ALL, corrupt  # noqa: E402


def _photo(size: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    import cv2

    cv2.setNumThreads(1)
    img = _photo(args.size)
    per_corruption = {}
    for name in ALL:
        corrupt(img, name, 1, np.random.default_rng(0))  # warm caches (frost textures)
        per_sev = [
            median_ms(
                lambda s=s, n=name: corrupt(img, n, s, np.random.default_rng(s)), args.repeats
            )
            for s in range(1, 6)
        ]
        per_corruption[name] = round(float(np.mean(per_sev)), 2)

    # glass shuffle only (the part the original loops over), same draws for both
    blurred = img.copy()
    fast_ms, loop_ms = [], []
    for severity, (_, delta, iters) in enumerate(GLASS_BLUR, start=1):
        offsets = glass_offsets(img.shape[:2], delta, iters, np.random.default_rng(severity))
        fast = glass_shuffle(blurred, offsets, delta)
        t = time.perf_counter()
        loop = glass_shuffle_loop(blurred, offsets, delta)
        loop_ms.append((time.perf_counter() - t) * 1000)
        assert np.array_equal(fast, loop), "vectorised glass shuffle differs from the loop port"
        fast_ms.append(median_ms(lambda o=offsets, d=delta: glass_shuffle(blurred, o, d), 5))
    record = {
        "benchmark": "corruptions",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hardware": {**machine(), "numpy": np.__version__, "opencv": cv2.__version__},
        "image_size": args.size,
        "ms_per_image": per_corruption,
        "ms_per_image_sum_benchmark15": round(sum(per_corruption[c] for c in ALL[:15]), 1),
        "glass_shuffle": {
            "ours_ms_per_severity": [round(v, 2) for v in fast_ms],
            "loop_port_ms_per_severity": [round(v, 1) for v in loop_ms],
            "speedup": round(float(np.sum(loop_ms) / np.sum(fast_ms)), 1),
            "identical_output": True,
        },
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
