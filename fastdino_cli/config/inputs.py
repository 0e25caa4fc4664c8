"""``data.*`` and ``crops.*``: where the pretraining images come from and the views cut from
them (multi-crop geometry and photometric augmentations, DINOv2's values by default)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from fastdino_cli.config.base import Section


def _workers(value: object) -> object:
    """``data.num_workers``: ``auto`` or a whole number >= 0 (one message for anything else)."""
    if value == "auto":
        return value
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0 or (isinstance(value, float) and value != n):
        raise ValueError("expected auto or a number of worker processes >= 0")
    return n


class DataConfig(Section):
    """Where the pretraining images come from and how they are loaded."""

    train: str | None = None
    """Folder of training images (any tree; labels are not needed), a ``.txt`` list of image
    paths (one per line, e.g. from ``fastdino curate``), or ``demo`` for the embedded demo data.
    Required by ``pretrain``."""
    num_workers: Annotated[int | Literal["auto"], BeforeValidator(_workers)] = "auto"
    """Data-loader worker processes per training process (0: load in the training process);
    auto: the CPU cores available to this machine's training processes, shared among them,
    less one each for the training process, at most 16 (0 with one core per process). Run
    control: changing it never stops a run from resuming."""
    fast_decode: bool = True
    """Decode JPEGs at reduced scale when the crops are small (Pillow ``draft``)."""
    pin_memory: bool = True
    """Pin host memory for faster copies to the GPU (ignored on CPU)."""
    prefetch_factor: int = Field(2, ge=1)
    """Batches prefetched by each worker (ignored without workers)."""


class CropsConfig(Section):
    """Multi-crop views and their photometric augmentations (DINOv2 values by default).

    Probabilities are applied literally: the defaults are what the released DINOv2 models were
    actually trained with (blur 0.0 / 0.9 / 0.5), not the reference code's inverted arguments.
    """

    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    """Range of the area fraction of the image a global crop covers (RandomResizedCrop)."""
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    """Range of the area fraction of the image a local crop covers (RandomResizedCrop)."""
    local_crops_number: int = Field(8, ge=0)
    """Local crops per image, beside the two global crops (0: global crops only)."""
    global_crops_size: int = Field(224, ge=1)
    """Side in pixels of the global crops, where the curriculum stage does not set its own."""
    local_crops_size: int = Field(96, ge=1)
    """Side in pixels of the local crops, where the curriculum stage does not set its own."""
    strategy: Literal["original", "shared", "crop-resize", "crop"] = "original"
    """Augmentation strategy ("cropping is all you need"): full DINOv2 photometric pipeline,
    one photometric draw shared by all views, RandomResizedCrop only, or RandomCrop only."""
    flip_prob: float = Field(0.5, ge=0, le=1)
    """Probability of a horizontal flip of each crop (not with ``crop-resize`` or ``crop``)."""
    color_jitter_prob: float = Field(0.8, ge=0, le=1)
    """Probability of colour jitter (brightness, contrast, saturation, hue in random order)."""
    brightness: float = Field(0.4, ge=0)
    """Colour-jitter brightness strength: the factor is drawn from U[1 - b, 1 + b]."""
    contrast: float = Field(0.4, ge=0)
    """Colour-jitter contrast strength: the factor is drawn from U[1 - c, 1 + c]."""
    saturation: float = Field(0.2, ge=0)
    """Colour-jitter saturation strength: the factor is drawn from U[1 - s, 1 + s]."""
    hue: float = Field(0.1, ge=0, le=0.5)
    """Colour-jitter hue shift, drawn from U[-hue, hue] (a fraction of the colour circle)."""
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    """Probability of converting a crop to grayscale (kept as three channels)."""
    blur_prob_global1: float = Field(0.0, ge=0, le=1)
    """Gaussian-blur probability of the first global crop (0.0: what DINOv2 actually ran)."""
    blur_prob_global2: float = Field(0.9, ge=0, le=1)
    """Gaussian-blur probability of the second global crop."""
    blur_prob_local: float = Field(0.5, ge=0, le=1)
    """Gaussian-blur probability of each local crop."""
    blur_kernel_size: int = Field(9, ge=1)
    """Side in pixels of the Gaussian-blur kernel."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Range the Gaussian-blur standard deviation (pixels) is drawn from."""
    solarize_prob_global2: float = Field(0.2, ge=0, le=1)
    """Solarization probability of the second global crop (the other crops are never
    solarized)."""
    solarize_threshold: int = Field(128, ge=0, le=256)
    """Pixel value (0-255 scale) from which solarization inverts a pixel (256: none)."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean subtracted after the augmentations (ImageNet statistics)."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation divided out after the augmentations."""
