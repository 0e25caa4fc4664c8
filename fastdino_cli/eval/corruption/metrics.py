"""ImageNet-C summary metrics: means over corruption sets, mCE and relative mCE.

With E_{s,c} the top-1 error on corruption c at severity s (arXiv:1903.12261):

    CE_c          = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}  = mean_s E_{s,c} / ALEXNET_ERR[c]
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)
    mCE, relative mCE = 100 * mean over the 15 benchmark corruptions (the 4 extras excluded)

``ALEXNET_ERR`` holds AlexNet's errors averaged over the five severities, keyed by name (never by
position), as published with the benchmark (``reference/eval_anchors.md`` A4).
"""

from __future__ import annotations

import re

import numpy as np

from fastdino_cli.eval.corruption.common import SEVERITIES
from fastdino_cli.eval.corruption.registry import BENCHMARK

ALEXNET_ERR: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# torchvision AlexNet_Weights.IMAGENET1K_V1 top-1 56.522 %, the model hendrycks' test.py loads
ALEXNET_CLEAN_ERR = 1 - 0.56522
_WNID = re.compile(r"^n\d{8}$")


def corruption_errors(top1: dict[tuple[str, int], float]) -> dict[str, float]:
    """Mean top-1 error over severities per corruption, from top-1 accuracy per (c, s)."""
    by_name: dict[str, list[float]] = {}
    for (name, _), acc in top1.items():
        by_name.setdefault(name, []).append(1.0 - acc)
    return {name: float(np.mean(errs)) for name, errs in by_name.items()}


def mce(errors: dict[str, float]) -> float:
    """mCE in percent from the mean error (over severities) per benchmark corruption."""
    return 100.0 * float(np.mean([errors[c] / ALEXNET_ERR[c] for c in BENCHMARK]))


def relative_mce(errors: dict[str, float], clean_error: float) -> float:
    """Relative mCE in percent: degradation from clean, relative to AlexNet's degradation."""
    ratios = [(errors[c] - clean_error) / (ALEXNET_ERR[c] - ALEXNET_CLEAN_ERR) for c in BENCHMARK]
    return 100.0 * float(np.mean(ratios))


def mce_unavailable_reason(
    class_names: list[str], cells: set[tuple[str, int]], clean_available: bool
) -> tuple[str | None, str | None]:
    """Why mCE / relative mCE cannot be reported (``None`` when they can).

    AlexNet's errors only mean something for the 1000 ImageNet classes and the full 15 x 5 grid.
    """
    wnids = {n for n in class_names if _WNID.match(n)}
    if len(class_names) != 1000 or len(wnids) != 1000:
        why = (
            f"the probe has {len(class_names)} classes, not the 1000 ImageNet-1k classes "
            "(WordNet ids n########) that AlexNet's errors refer to"
        )
        return why, why
    missing = [c for c in BENCHMARK if any((c, s) not in cells for s in SEVERITIES)]
    if missing:
        why = (
            "mCE needs all 15 benchmark corruptions at severities 1-5; missing "
            + ", ".join(missing[:4])
            + (" ..." if len(missing) > 4 else "")
        )
        return why, why
    if not clean_available:
        return None, "relative mCE needs the clean accuracy (give --clean DIR with --imagenet-c)"
    return None, None
