"""Multi-crop views, augmentation strategies and Gaussian noise patching.

Per image: 2 global crops (RandomResizedCrop, scale ``global_crops_scale``, bicubic) and
``local_crops_number`` local crops (scale ``local_crops_scale``), each followed by the DINOv2
photometric pipeline: flip, colour jitter (random order) with ``color_jitter_prob``, grayscale,
Gaussian blur (kernel ``blur_kernel_size``, sigma U[blur_sigma]) with the probability of its crop
kind, solarize on global crop 2. Crops stay 8-bit; normalisation happens on the training device
(``MultiCropBatch.to``). Probabilities are applied literally.

Strategies ("cropping is all you need"):
    original     the pipeline above, drawn independently for every crop
    shared       geometry per crop, ONE photometric draw per image shared by all its crops
                 (blur with ``blur_prob_local``, solarize with ``solarize_prob_global2``)
    crop-resize  RandomResizedCrop only
    crop         RandomCrop at the crop size, never rescaled (zero-padded if the image is smaller)

Gaussian noise patching (FastDINOv2, SPEC section 2) runs on the full decoded image before any
cropping: with probability ``prob`` one square of side U{1..min(H, W)} placed fully inside the
image gets N(0, sigma^2) noise per pixel and channel, sigma ~ U(0, max_sigma), in [0, 1] pixel
space, clamped, rounded back to 8 bits. Pixels outside the square are untouched.

Crop sizes and noise settings come from the curriculum stage of the step each sample is built
for: the sampler hands ``(index, step)`` pairs to the dataset, so data-loader workers apply a
stage change at the exact step without being recreated. Every random draw comes from a
``torch.Generator`` seeded by (seed, step, index): a sample does not depend on the worker that
builds it, and a resumed run sees the very same crops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from fastdino_cli.config import CropsConfig, CurriculumConfig, NoisePatchingConfig
from fastdino_cli.curriculum import resolve_stages, stage_index_at_step
from fastdino_cli.data.images import UnreadableImage, load_rgb
from fastdino_cli.data.jpeg_scale import spec_for_stage
from fastdino_cli.data.masking import CropSample
from fastdino_cli.data.photometric import augment_crop
from fastdino_cli.errors import DataError
from fastdino_cli.seeding import seed_for


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g).item())


def _coin(g: torch.Generator, p: float) -> bool:
    return p > 0 and torch.rand((), generator=g).item() < p


# --------------------------------------------------------------------------------------------
# Gaussian noise patching
# --------------------------------------------------------------------------------------------


def noise_patch(
    img: Tensor, max_sigma: float, g: torch.Generator, prob: float = 1.0
) -> tuple[Tensor, dict]:
    """Add one Gaussian-noise square to a (3, H, W) uint8 image; returns (image, what was done).

    The returned dict holds ``applied``, ``top``, ``left``, ``side`` and ``sigma``.
    """
    if not _coin(g, prob):
        return img, {"applied": False, "top": 0, "left": 0, "side": 0, "sigma": 0.0}
    _, h, w = img.shape
    side = _randint(g, 1, min(h, w))
    top = _randint(g, 0, h - side)
    left = _randint(g, 0, w - side)
    sigma = _uniform(g, 0.0, max_sigma)
    out = img.clone()
    patch = out[:, top : top + side, left : left + side].float() / 255.0
    noise = torch.randn(patch.shape, generator=g) * sigma
    patch = ((patch + noise).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    out[:, top : top + side, left : left + side] = patch
    return out, {"applied": True, "top": top, "left": left, "side": side, "sigma": sigma}


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def random_resized_crop_box(
    h: int, w: int, scale: tuple[float, float], g: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, height, width) as RandomResizedCrop draws it (ratio 3/4..4/3, 10 tries)."""
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        ratio = math.exp(_uniform(g, *log_ratio))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < 3 / 4:
        cw, ch = w, int(round(w / (3 / 4)))
    elif in_ratio > 4 / 3:
        ch, cw = h, int(round(h * (4 / 3)))
    else:
        cw, ch = w, h
    ch, cw = min(ch, h), min(cw, w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_crop(img: Tensor, size: int, g: torch.Generator) -> Tensor:
    """A ``size`` x ``size`` window of ``img`` at its native resolution (zero-pad if smaller)."""
    _, h, w = img.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = torch.nn.functional.pad(img, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        _, h, w = img.shape
    top, left = _randint(g, 0, h - size), _randint(g, 0, w - size)
    return img[:, top : top + size, left : left + size]


# --------------------------------------------------------------------------------------------
# Photometric
# --------------------------------------------------------------------------------------------


def _draw_photometric(cfg: CropsConfig, g: torch.Generator, blur_p: float, sol_p: float) -> dict:
    jitter = None
    if _coin(g, cfg.color_jitter_prob):
        b, c, s, hue = cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue
        jitter = {
            "order": torch.randperm(4, generator=g).tolist(),
            "factors": [
                _uniform(g, max(0.0, 1 - b), 1 + b),
                _uniform(g, max(0.0, 1 - c), 1 + c),
                _uniform(g, max(0.0, 1 - s), 1 + s),
                _uniform(g, -hue, hue),
            ],
        }
    gray = _coin(g, cfg.grayscale_prob)
    blur = _uniform(g, *cfg.blur_sigma) if _coin(g, blur_p) else None
    solarize = _coin(g, sol_p)
    return {"jitter": jitter, "gray": gray, "blur": blur, "solarize": solarize}


class MultiCropTransform:
    """Full image -> (global crops, local crops, noise sigma) for one curriculum stage.

    Crops are uint8 (3, size, size); the batch normalises them on the device
    (``MultiCropBatch.to``)."""

    def __init__(
        self,
        cfg: CropsConfig,
        *,
        global_size: int,
        local_size: int,
        noise: NoisePatchingConfig | None = None,
    ) -> None:
        self.cfg = cfg
        self.global_size = global_size
        self.local_size = local_size
        self.noise = noise or NoisePatchingConfig()

    def _geometry(self, img: Tensor, size: int, scale, g: torch.Generator) -> Tensor:
        strategy = self.cfg.strategy
        if strategy == "crop":
            return random_crop(img, size, g)
        top, left, ch, cw = random_resized_crop_box(img.shape[1], img.shape[2], scale, g)
        out = TF.resized_crop(
            img, top, left, ch, cw, [size, size], TF.InterpolationMode.BICUBIC, antialias=True
        )
        if strategy != "crop-resize" and _coin(g, self.cfg.flip_prob):
            out = TF.horizontal_flip(out)
        return out

    def __call__(
        self, image: Image.Image | Tensor, g: torch.Generator
    ) -> tuple[list[Tensor], list[Tensor], float]:
        img = TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image
        sigma = -1.0
        if self.noise.enabled:
            img, info = noise_patch(img, self.noise.max_sigma, g, self.noise.prob)
            sigma = info["sigma"]
        cfg = self.cfg
        photometric = cfg.strategy in ("original", "shared")
        shared = (
            _draw_photometric(cfg, g, cfg.blur_prob_local, cfg.solarize_prob_global2)
            if cfg.strategy == "shared"
            else None
        )
        kinds = [("g1", self.global_size), ("g2", self.global_size)] + [
            ("l", self.local_size)
        ] * cfg.local_crops_number
        crops = []
        for kind, size in kinds:
            scale = cfg.global_crops_scale if kind != "l" else cfg.local_crops_scale
            x, params = self._geometry(img, size, scale, g), None  # uint8 until augment_crop
            if photometric:
                if cfg.strategy == "shared":
                    params = shared
                else:
                    blur_p = {
                        "g1": cfg.blur_prob_global1,
                        "g2": cfg.blur_prob_global2,
                        "l": cfg.blur_prob_local,
                    }[kind]
                    sol_p = cfg.solarize_prob_global2 if kind == "g2" else 0.0
                    params = _draw_photometric(cfg, g, blur_p, sol_p)
            crops.append(augment_crop(x, params, cfg))
        return crops[:2], crops[2:], sigma


# --------------------------------------------------------------------------------------------
# Dataset and sampler: the stage travels with the step index
# --------------------------------------------------------------------------------------------


class MultiCropDataset(Dataset):
    """Images -> ``CropSample`` for keys ``(index, step)``; the stage is looked up from ``step``.

    An unreadable file is replaced by the next readable one (deterministically) and reported in
    the sample's ``skipped_files``.
    """

    def __init__(
        self,
        files: list[Path],
        crops: CropsConfig,
        curriculum: CurriculumConfig,
        *,
        total_steps: int,
        seed: int,
        fast_decode: bool = True,
    ) -> None:
        self.files = list(files)
        self.crops = crops
        self.curriculum = curriculum
        self.total_steps = total_steps
        self.seed = seed
        self.fast_decode = fast_decode
        self.transforms = [
            MultiCropTransform(
                crops,
                global_size=st.global_crops_size,
                local_size=st.local_crops_size,
                noise=st.noise_patching,
            )
            for st in resolve_stages(curriculum, crops)
        ]
        self.decode_specs = [spec_for_stage(t, fast_decode=fast_decode) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> CropSample:
        index, step = key
        stage = stage_index_at_step(self.curriculum, step, self.total_steps)
        transform = self.transforms[stage]
        skipped: list[str] = []
        n = len(self.files)
        for k in range(n):
            path = self.files[(index + k) % n]
            try:
                image = load_rgb(path, self.decode_specs[stage])
                break
            except UnreadableImage:
                skipped.append(str(path))
        else:
            raise DataError(f"none of the {n} image files could be read (first: {self.files[0]})")
        g = torch.Generator().manual_seed(seed_for(self.seed, step, index))
        glob, loc, sigma = transform(image, g)
        return CropSample(glob, loc, step, stage, sigma, skipped)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(index, step)`` keys for steps ``start_step .. end_step - 1``.

    Sample position ``p = (step * world + rank) * batch_size + i`` walks through a fresh
    permutation of the dataset per data epoch (seeded by (seed, epoch)), so the order is a pure
    function of the step: resuming at step s continues the very same sequence.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int,
        start_step: int,
        end_step: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            base = (step * self.world_size + self.rank) * self.batch_size
            yield [(self._index(base + i), step) for i in range(self.batch_size)]
