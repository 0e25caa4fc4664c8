"""The reference's on-the-fly linear evaluation (``fastdino probe --augment``).

DINOv2 trains its linear heads on RandomResizedCrop + horizontal-flip views of the training
images, re-extracting frozen features at every step, instead of on one cached centre crop.
That costs a backbone forward per image per epoch but can add a little accuracy. The protocol
around it is the same as the cached mode: a stratified split held out from train (evaluated
with the eval transform, cached) chooses the head, val (cached) is evaluated once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from fastdino_cli.data.labelled import LabelledFolder
from fastdino_cli.eval.features import (
    FeatureRecipe,
    Features,
    ImageDataset,
    autocast_for,
    extract_features,
    probe_features,
    raise_decode_errors,
)
from fastdino_cli.eval.probe.linear import (
    DEFAULT_LRS,
    GridTrainer,
    LinearResult,
    evaluate_grid,
    grid_recipes,
    input_dims,
    report_on_val,
    stratified_split,
)


def train_transform(recipe: FeatureRecipe) -> T.Compose:
    """RandomResizedCrop(crop, bicubic) + flip + normalise: the reference's linear-train views."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                recipe.crop_size, interpolation=T.InterpolationMode(recipe.interpolation)
            ),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(recipe.mean), std=list(recipe.std)),
        ]
    )


def _subset(folder: LabelledFolder, idx: Tensor) -> LabelledFolder:
    keep = idx.tolist()
    return LabelledFolder(
        root=folder.root,
        class_names=folder.class_names,
        paths=[folder.paths[i] for i in keep],
        labels=[folder.labels[i] for i in keep],
    )


def linear_probe_augmented(
    model: nn.Module,
    train: LabelledFolder,
    val: Features,
    recipe: FeatureRecipe,
    *,
    n_last_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
    lrs: Sequence[float] = DEFAULT_LRS,
    holdout: float = 0.1,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    use_cache: bool = True,
    backbone_hash: str | None = None,
) -> LinearResult:
    """Grid trained on augmented views of train minus the held-out split; chosen on that split."""
    device = torch.device(device)
    model.eval().to(device)
    n_blocks = min(max(int(b) for b in n_last_blocks), len(model.blocks))
    recipes = grid_recipes(n_last_blocks, avgpool, n_blocks)
    fit_idx, hold_idx = stratified_split(torch.tensor(train.labels), holdout, seed)
    fit, hold_folder = _subset(train, fit_idx), _subset(train, hold_idx)
    hold = extract_features(
        model, hold_folder, recipe, n_blocks=n_blocks, device=device, num_workers=num_workers,
        use_cache=use_cache, backbone_hash=backbone_hash, desc="held-out features",
    )  # fmt: skip
    trainer = GridTrainer(
        in_dims=input_dims(recipes, int(val.cls.shape[-1])), recipes=recipes, lrs=lrs,
        num_classes=len(train.class_names), batch_size=batch_size,
        total_steps=epochs * math.ceil(len(fit) / batch_size), seed=seed, device=device,
    )  # fmt: skip
    dataset = ImageDataset(fit, train_transform(recipe), recipe.crop_size)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the views drawn in the main process (num_workers=0)
        for _ in range(epochs):
            loader = DataLoader(
                dataset, batch_size=batch_size, shuffle=True, generator=g,
                num_workers=num_workers, pin_memory=device.type == "cuda",
            )  # fmt: skip
            for x, y, err in loader:
                raise_decode_errors(err)
                with torch.no_grad(), autocast_for(device):
                    cls, patch_mean = probe_features(model, x.to(device), n_blocks)
                trainer.step(cls, patch_mean, y)
    grid = trainer.grid()
    hold_top1, _ = evaluate_grid(grid, hold)
    chosen = int(torch.argmax(hold_top1))
    return report_on_val(grid, chosen, hold_top1, val, len(fit), len(hold))
