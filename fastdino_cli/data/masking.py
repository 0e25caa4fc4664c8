"""iBOT block masks, stratified mask ratios and the multi-crop collate function.

Block masking (BEiT-style, as DINOv2): rectangles of area U[4, remaining] patches and log-uniform
aspect ratio in [0.3, 1/0.3] are added until the target count is reached or ten tries in a row
add nothing; a block may add at most ``block_mask_cap`` patches, "half of the grid" computed with
the reference's integer arithmetic (21 on a 7x7 grid, 98 on 14x14). Of the 2B global crops of a
batch,
``int(2B * mask_sample_probability)`` get a mask whose ratio is drawn stratified: image i draws
from U[p_i, p_{i+1}] with ``p = linspace(lo, hi, n_masked + 1)``; the masks are then shuffled
over all 2B crops. The mask grid follows the crop size (``crop // patch``), so it changes with
the curriculum stage by itself.

All randomness comes from an explicit ``numpy.random.Generator`` so that a batch is a pure
function of (seed, step), in any data-loader worker.

The collate function also turns the bool masks into what the training step indexes with: the
(image, token) position of every masked patch and its iBOT weight. Done here, on the CPU of a
loader worker, because on a GPU ``patches[masks]`` must first count the True entries
(``nonzero``) and copy that count to the host: a synchronisation that stalls the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fastdino_cli.data.photometric import normalisation_affine, normalise


def block_mask_cap(crop_size: int, patch_size: int, crop_width: int | None = None) -> int:
    """Most patches one block may add: DINOv2's ``max_num_patches = 0.5 * img_size //
    patch_size * img_size // patch_size`` evaluated as Python does, left to right with floor
    divisions: ``((0.5 * img) // p * img) // p``. That is ``floor(grid / 2) * grid`` for a crop
    of whole patches (21 on a 7x7 grid, not 24; 98 on 14x14), 0 below two patch rows.
    ``crop_width`` (default ``crop_size``) generalises it to a non-square crop."""
    width = crop_size if crop_width is None else crop_width
    return int((0.5 * crop_size) // patch_size * width // patch_size)


class BlockMaskGenerator:
    """Block masks on a ``height x width`` patch grid.

    ``max_num_patches`` caps what one block adds; the default is ``block_mask_cap`` for a crop of
    exactly ``height x width`` patches, ``(height // 2) * width``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width = height, width
        self.num_patches = height * width
        self.min_num_patches = min_num_patches
        self.max_num_patches = (height // 2) * width if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: np.ndarray, max_new: int, rng: np.random.Generator) -> int:
        for _ in range(10):
            lo = min(self.min_num_patches, max_new)
            area = rng.uniform(lo, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < w < self.width and 0 < h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_new:
                    block[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int, rng: np.random.Generator) -> np.ndarray:
        """A (height, width) bool mask with about ``num_masking_patches`` True entries."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            max_new = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, max_new, rng)
            if added == 0:
                break
            count += added
        return mask


def stratified_masks(
    n_images: int,
    grid: tuple[int, int],
    *,
    mask_probability: float,
    ratio_min_max: tuple[float, float],
    rng: np.random.Generator,
    max_block_patches: int | None = None,
) -> Tensor:
    """(n_images, grid_h * grid_w) bool masks: a stratified fraction masked, then shuffled.

    ``max_block_patches``: ``block_mask_cap`` of the crop (None: that of a crop of whole patches).
    """
    gen = BlockMaskGenerator(*grid, max_num_patches=max_block_patches)
    n_tokens = grid[0] * grid[1]
    n_masked = int(n_images * mask_probability)
    probs = np.linspace(ratio_min_max[0], ratio_min_max[1], n_masked + 1)
    masks = []
    for i in range(n_masked):
        target = int(n_tokens * rng.uniform(probs[i], probs[i + 1]))
        masks.append(gen(target, rng).reshape(-1))
    masks += [np.zeros(n_tokens, dtype=bool) for _ in range(n_images - n_masked)]
    order = rng.permutation(n_images)
    return torch.from_numpy(np.stack([masks[i] for i in order]))


def token_weights(masks: Tensor) -> Tensor:
    """Per masked token (in ``masks[masks]`` order), 1 / number of masked tokens of its image."""
    per_image = masks.sum(dim=1, keepdim=True).clamp(min=1).float()
    return (1.0 / per_image).expand_as(masks)[masks]


def mask_positions(masks: Tensor) -> Tensor:
    """(2, M) int64: image and token index of each masked patch, in ``masks[masks]`` order."""
    return masks.nonzero().t().contiguous()


@dataclass
class MultiCropBatch:
    """One training batch: crops stacked crop-major, iBOT masks and what the workers applied."""

    global_crops: Tensor
    """(2B, 3, G, G) normalised: all images' global crop 1, then all images' crop 2."""
    local_crops: Tensor | None
    """(n_local * B, 3, L, L), crop-major, or None without local crops."""
    masks: Tensor
    """(2B, N) bool iBOT masks of the global crops (N = (G // patch) ** 2)."""
    step: int
    """Training iteration this batch was built for."""
    stage: int
    """Curriculum stage index the worker applied."""
    noise_sigmas: Tensor
    """(B,) noise std applied to each image (0 where none); -1 where noise patching is off."""
    skipped_files: list[str] = field(default_factory=list)
    """Unreadable files replaced by another image while building this batch."""
    mask_index: Tensor | None = None
    """(2, M) image and token index of each masked patch (``mask_positions``); derived from
    ``masks`` at construction when not given."""
    mask_weights: Tensor | None = None
    """(M,) iBOT weight of each masked patch (``token_weights``); derived likewise."""
    normalisation: Tensor | None = None
    """(2, 3) per-channel scale and offset that turn uint8 crops into normalised floats
    (``photometric.normalisation_affine``); None for crops that are float already."""

    def __post_init__(self) -> None:
        # derived where the batch is built (a loader worker's CPU), never on the device
        if self.mask_index is None:
            self.mask_index = mask_positions(self.masks)
        if self.mask_weights is None:
            self.mask_weights = token_weights(self.masks)

    @property
    def n_masked(self) -> int:
        """Masked patches in the batch (M), known on the host."""
        return int(self.mask_index.shape[1])

    @property
    def batch_size(self) -> int:
        return self.global_crops.shape[0] // 2

    @property
    def n_local(self) -> int:
        return 0 if self.local_crops is None else self.local_crops.shape[0] // self.batch_size

    def pin_memory(self) -> MultiCropBatch:
        self.global_crops = self.global_crops.pin_memory()
        if self.local_crops is not None:
            self.local_crops = self.local_crops.pin_memory()
        self.masks = self.masks.pin_memory()
        self.mask_index = self.mask_index.pin_memory()
        self.mask_weights = self.mask_weights.pin_memory()
        if self.normalisation is not None:
            self.normalisation = self.normalisation.pin_memory()
        return self

    def to(self, device: torch.device | str) -> MultiCropBatch:
        """The batch on ``device``, its uint8 crops normalised to float32 THERE: the bytes that
        cross to the device are 8-bit. Float crops are moved as they are."""
        nb = torch.device(device).type == "cuda"  # asynchronous from pinned memory

        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=nb)

        affine = None if self.normalisation is None else move(self.normalisation)

        def crops(t: Tensor) -> Tensor:
            t = move(t)
            if t.dtype != torch.uint8:
                return t
            if affine is None:
                raise ValueError("uint8 crops need the batch's normalisation (mean and std)")
            return normalise(t, affine)

        return MultiCropBatch(
            global_crops=crops(self.global_crops),
            local_crops=None if self.local_crops is None else crops(self.local_crops),
            masks=move(self.masks),
            step=self.step,
            stage=self.stage,
            noise_sigmas=self.noise_sigmas,
            skipped_files=self.skipped_files,
            mask_index=move(self.mask_index),
            mask_weights=move(self.mask_weights),
        )


@dataclass
class CropSample:
    """What the dataset returns for one image (the collate function stacks these)."""

    global_crops: list[Tensor]
    local_crops: list[Tensor]
    step: int
    stage: int
    noise_sigma: float
    skipped_files: list[str] = field(default_factory=list)


class MultiCropCollate:
    """Stack ``CropSample``s crop-major and draw the iBOT masks for the batch's step.

    ``mean`` / ``std`` (``crops.mean``, ``crops.std``) travel with batches of uint8 crops, which
    the batch normalises on the training device; float crops need none.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        mask_probability: float,
        ratio_min_max: tuple[float, float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.normalisation = (
            normalisation_affine(mean, std) if mean is not None and std is not None else None
        )
        self.patch_size = patch_size
        self.mask_probability = mask_probability
        self.ratio_min_max = tuple(ratio_min_max)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __call__(self, samples: list[CropSample]) -> MultiCropBatch:
        n_global = len(samples[0].global_crops)
        n_local = len(samples[0].local_crops)
        glob = torch.stack([s.global_crops[i] for i in range(n_global) for s in samples])
        loc = (
            torch.stack([s.local_crops[i] for i in range(n_local) for s in samples])
            if n_local
            else None
        )
        step = samples[0].step
        grid = (glob.shape[-2] // self.patch_size, glob.shape[-1] // self.patch_size)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, step, 0x3A5C])
        # masks are drawn for the GLOBAL batch (all ranks) and this rank keeps its rows, so
        # ranks get different masks and n processes compute what one process would
        masks = stratified_masks(
            glob.shape[0] * self.world_size,
            grid,
            mask_probability=self.mask_probability,
            ratio_min_max=self.ratio_min_max,
            rng=rng,
            max_block_patches=block_mask_cap(glob.shape[-2], self.patch_size, glob.shape[-1]),
        )
        if self.world_size > 1:
            b, g = len(samples), len(samples) * self.world_size
            rows = [c * g + self.rank * b + j for c in range(n_global) for j in range(b)]
            masks = masks[rows]
        return MultiCropBatch(
            global_crops=glob,
            local_crops=loc,
            masks=masks,
            step=step,
            stage=samples[0].stage,
            noise_sigmas=torch.tensor([s.noise_sigma for s in samples]),
            skipped_files=[f for s in samples for f in s.skipped_files],
            normalisation=self.normalisation if glob.dtype == torch.uint8 else None,
        )
