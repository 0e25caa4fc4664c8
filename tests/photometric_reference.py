"""The torchvision reference of the photometric pipeline: an oracle, kept out of the package.

``data/photometric.py`` does the same arithmetic with OpenCV on 8-bit crops; this is the
definition it is checked against (``tests/test_photometric.py``), and the pipeline before #11
that ``benchmarks/data_pipeline.py`` measures as its baseline.
"""

from __future__ import annotations

import torchvision.transforms.v2.functional as TF
from torch import Tensor

from fastdino_cli.config import CropsConfig


def apply_photometric_torchvision(x: Tensor, p: dict, cfg: CropsConfig) -> Tensor:
    """Apply drawn photometric parameters (``multicrop._draw_photometric``) to a float
    (3, h, w) crop in [0, 1] with torchvision's tensor functionals."""
    if p["jitter"] is not None:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for i in p["jitter"]["order"]:
            x = ops[i](x, p["jitter"]["factors"][i])
    if p["gray"]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p["blur"] is not None:
        k = cfg.blur_kernel_size
        x = TF.gaussian_blur(x, kernel_size=[k, k], sigma=[p["blur"], p["blur"]])
    if p["solarize"]:
        x = TF.solarize(x, cfg.solarize_threshold / 255.0)
    return x
