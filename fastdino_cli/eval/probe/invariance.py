"""View invariance: how similar are the embeddings of augmented views of one image?

For each augmentation strategy of "cropping is all you need" (Table 3, right): draw several
views of each image, embed them (teacher CLS after the final norm, L2-normalised) and average the
cosine similarity over all pairs of views of the same image, then over images. A model trained
with a strategy should be most invariant to it. For scale, ``different-images`` is the mean
cosine between the centre crops of different images: a value near it means no invariance.

Strategies (crop size = the eval crop, parameters from the checkpoint's ``crops`` config,
defaults ``CropsConfig``):

- ``original``: DINOv2's global-crop pipeline, RandomResizedCrop + flip + colour jitter +
  grayscale + blur (+ solarize); views alternate the two global-crop settings (blur 0.0 vs 0.9,
  solarize only on the second) as DINOv2's two global crops do.
- ``shared``: RandomResizedCrop + flip per view, one photometric draw per image shared by all
  of its views.
- ``crop-resize``: RandomResizedCrop only.
- ``crop``: RandomCrop of the crop size without rescaling (images smaller than the crop are
  first enlarged to it).
- ``identity`` (tests): every view is the eval centre crop, so the invariance is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps
from pydantic import ValidationError
from torch import Tensor, nn
from torchvision import transforms as T1
from torchvision.transforms import functional as TF
from torchvision.transforms import v2 as T

from fastdino_cli.config import CropsConfig
from fastdino_cli.data.labelled import LabelledFolder
from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.features import FeatureRecipe, autocast_for, eval_transform

STRATEGIES = ("original", "shared", "crop-resize", "crop")
ViewFn = Callable[[Image.Image, int], list[Tensor]]


def crops_from_config(config: Mapping[str, Any]) -> CropsConfig:
    """The checkpoint's ``crops`` section (defaults where it has none)."""
    try:
        return CropsConfig.model_validate(dict(config.get("crops") or {}))
    except ValidationError as e:
        first = str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"the checkpoint's crops config does not validate: {first}") from None


def _to_input(recipe: FeatureRecipe) -> T.Compose:
    return T.Compose(
        [
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(recipe.mean), std=list(recipe.std)),
        ]
    )


def _photometric(c: CropsConfig, blur_p: float, solarize_p: float) -> T1.Compose:
    return T1.Compose(
        [
            T1.RandomApply(
                [T1.ColorJitter(c.brightness, c.contrast, c.saturation, c.hue)],
                p=c.color_jitter_prob,
            ),
            T1.RandomGrayscale(p=c.grayscale_prob),
            T1.RandomApply([T1.GaussianBlur(c.blur_kernel_size, c.blur_sigma)], p=blur_p),
            T1.RandomApply([T1.RandomSolarize(c.solarize_threshold, p=1.0)], p=solarize_p),
        ]
    )


def _shared_photometric(c: CropsConfig) -> Callable[[Image.Image], Image.Image]:
    """One draw of DINOv2's photometric augmentation, applied identically to every view."""
    jitter = torch.rand(()) < c.color_jitter_prob
    order, b, ct, s, h = T1.ColorJitter.get_params(
        (max(0.0, 1 - c.brightness), 1 + c.brightness),
        (max(0.0, 1 - c.contrast), 1 + c.contrast),
        (max(0.0, 1 - c.saturation), 1 + c.saturation),
        (-c.hue, c.hue),
    )
    gray = torch.rand(()) < c.grayscale_prob
    blur = torch.rand(()) < c.blur_prob_global2
    sigma = float(torch.empty(()).uniform_(c.blur_sigma[0], c.blur_sigma[1]))
    solarize = torch.rand(()) < c.solarize_prob_global2
    adjust = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation}

    def apply(img: Image.Image) -> Image.Image:
        if jitter:
            for i in order.tolist():
                img = TF.adjust_hue(img, h) if i == 3 else adjust[i](img, (b, ct, s)[i])
        if gray:
            img = ImageOps.grayscale(img).convert("RGB")
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
        if solarize:
            img = ImageOps.solarize(img, c.solarize_threshold)
        return img

    return apply


def view_sampler(strategy: str, recipe: FeatureRecipe, crops: CropsConfig) -> ViewFn:
    """A function (image, n) -> n normalised view tensors under ``strategy``."""
    size = recipe.crop_size
    to_input = _to_input(recipe)
    rrc = T1.RandomResizedCrop(
        size, scale=tuple(crops.global_crops_scale), interpolation=T1.InterpolationMode.BICUBIC
    )
    flip = T1.RandomHorizontalFlip(crops.flip_prob)
    if strategy == "identity":
        center = eval_transform(recipe)
        return lambda img, n: [center(img)] * n
    if strategy == "original":
        pipes = [
            _photometric(crops, crops.blur_prob_global1, 0.0),
            _photometric(crops, crops.blur_prob_global2, crops.solarize_prob_global2),
        ]
        return lambda img, n: [to_input(pipes[i % 2](flip(rrc(img)))) for i in range(n)]
    if strategy == "shared":

        def shared(img: Image.Image, n: int) -> list[Tensor]:
            photo = _shared_photometric(crops)
            return [to_input(photo(flip(rrc(img)))) for _ in range(n)]

        return shared
    if strategy == "crop-resize":
        return lambda img, n: [to_input(rrc(img)) for _ in range(n)]
    if strategy == "crop":
        crop = T1.RandomCrop(size)

        def crop_only(img: Image.Image, n: int) -> list[Tensor]:
            if min(img.size) < size:
                img = TF.resize(img, size, interpolation=T1.InterpolationMode.BICUBIC)
            return [to_input(crop(img)) for _ in range(n)]

        return crop_only
    raise ConfigError(f"unknown augmentation strategy {strategy!r}; choose from {STRATEGIES}")


@torch.no_grad()
def _embed(model: nn.Module, x: Tensor, device: torch.device, chunk: int = 256) -> Tensor:
    """L2-normalised final CLS of a stack of normalised images, in chunks."""
    out = []
    for start in range(0, x.shape[0], chunk):
        with autocast_for(device):
            z = model.forward_features(x[start : start + chunk].to(device)).cls
        out.append(F.normalize(z.float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def view_invariance(
    model: nn.Module,
    images: list[Image.Image],
    sample_views: ViewFn,
    *,
    num_views: int = 4,
    device: str | torch.device = "cpu",
) -> float:
    """Mean over images of the mean pairwise cosine similarity between their views."""
    if num_views < 2:
        raise ConfigError(f"invariance needs at least 2 views per image, got {num_views}")
    device = torch.device(device)
    views = torch.stack([v for img in images for v in sample_views(img, num_views)])
    z = _embed(model, views, device).view(len(images), num_views, -1)
    sims = z @ z.transpose(1, 2)  # (n_images, V, V)
    off = ~torch.eye(num_views, dtype=torch.bool, device=sims.device)
    return float(sims[:, off].mean())


def measure_invariance(
    model: nn.Module,
    folder: LabelledFolder,
    recipe: FeatureRecipe,
    config: Mapping[str, Any],
    *,
    strategies: tuple[str, ...] = STRATEGIES,
    num_images: int = 64,
    num_views: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Invariance per strategy on ``num_images`` images spread over ``folder``, plus scale."""
    model.eval()
    device = torch.device(device)
    n = min(num_images, len(folder))
    idx = torch.linspace(0, len(folder) - 1, n).round().long().unique().tolist()
    images = [folder.load_rgb(i) for i in idx]
    crops = crops_from_config(config)
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        for strategy in strategies:
            torch.manual_seed(seed)
            out[strategy] = view_invariance(
                model, images, view_sampler(strategy, recipe, crops), num_views=num_views,
                device=device,
            )  # fmt: skip
    center = eval_transform(recipe)
    z = _embed(model, torch.stack([center(img) for img in images]), device)
    off = ~torch.eye(len(images), dtype=torch.bool, device=z.device)
    out["different-images"] = float((z @ z.T)[off].mean()) if len(images) > 1 else float("nan")
    return out
