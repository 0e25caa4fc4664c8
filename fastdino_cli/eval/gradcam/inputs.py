"""What Grad-CAM runs on: image lists, labelled folders, the eval transform and loaded models.

A ``CamModel`` is one checkpoint made ready for Grad-CAM: its teacher backbone, its stored probe
classifier when it has one, and the normalisation it expects. Tests and notebooks can build one
directly from modules; ``load_cam_model`` builds it from a fastdino checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fastdino_cli.data.images import is_image_list, read_rgb_or_fail, scan_images
from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureRecipe,
    default_recipe,
    eval_transform,
)


@dataclass(frozen=True)
class Sample:
    """One image to explain; ``true_class`` is known when it came from a labelled folder."""

    path: Path
    true_class: str | None = None


def list_images(paths: Sequence[str | Path]) -> list[Sample]:
    """Image files given directly, found (recursively, sorted) in folders, or listed in a .txt.

    A ``.txt`` file holds one image path per line (relative paths are relative to the file).
    """
    samples: list[Sample] = []
    for p in map(Path, paths):
        if p.is_dir() or (p.is_file() and is_image_list(p)):
            samples += [Sample(f) for f in scan_images(p)]  # the pretraining reader's files
        elif p.exists():
            samples.append(Sample(p))
        else:
            raise DataError(f"image {p} does not exist")
    if not samples:
        raise DataError("no images given: pass --images FILE|DIR or --data DIR --per-class N")
    return samples


def labelled_classes(root: str | Path) -> dict[str, list[Path]]:
    """``root/<class>/**/image`` -> {class: sorted images}: the probes' reader
    (``data.labelled.scan_labelled_folder``), a single class allowed."""
    return scan_labelled_folder(root, what="labelled", min_classes=1).by_class()


def sample_per_class(root: str | Path, per_class: int, seed: int = 0) -> list[Sample]:
    """``per_class`` images of every class of a labelled folder (seeded, in class order)."""
    if per_class < 1:
        raise DataError(f"--per-class must be at least 1, got {per_class}")
    rng = random.Random(seed)
    samples: list[Sample] = []
    for name, files in labelled_classes(root).items():
        chosen = sorted(rng.sample(files, min(per_class, len(files))))
        samples += [Sample(f, name) for f in chosen]
    return samples


def read_image(path: Path) -> Image.Image:
    """An RGB PIL image, or a one-line DataError naming the file."""
    return read_rgb_or_fail(path)


def sized_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """The probes' eval transform at an explicit size: resize to size*256/224, centre-crop."""
    recipe = FeatureRecipe(
        resize_size=round(image_size * 256 / 224), crop_size=image_size, mean=mean, std=std
    )
    return eval_transform(recipe, normalize=False)


def load_pixels(samples: Sequence[Sample], transform: Callable) -> Tensor:
    """(N, 3, H, W) float in [0, 1] after the eval transform."""
    return torch.stack([transform(read_image(s.path)).clamp(0, 1) for s in samples])


@dataclass
class CamModel:
    """One checkpoint ready for Grad-CAM."""

    name: str
    backbone: nn.Module
    """The ViT: ``patch_size``, ``num_register_tokens``, ``blocks``; ``forward`` -> (B, D)."""
    classifier: nn.Module | None = None
    """Normalised images -> logits, containing ``backbone`` (None without a probe)."""
    class_names: list[str] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int | None = None
    resize_size: int | None = None
    preprocess: Callable[[Image.Image], Tensor] | None = None
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def normalise(self, pixels: Tensor) -> Tensor:
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=pixels.device)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=pixels.device)
        return (pixels.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    @torch.no_grad()
    def embed(self, pixels: Tensor) -> Tensor:
        """Backbone embeddings (B, D) of images in [0, 1] (no gradient)."""
        return self.backbone(self.normalise(pixels.to(self.device))).float()

    @torch.no_grad()
    def logits(self, pixels: Tensor) -> Tensor:
        assert self.classifier is not None
        return self.classifier(self.normalise(pixels.to(self.device))).float()


def _find_backbone(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if hasattr(m, "blocks") and hasattr(m, "patch_size"):
            return m
    raise DataError(f"no ViT backbone found inside {type(module).__name__}")


def checkpoint_display_name(path: Path) -> str:
    """``runs/fast/final.pt`` -> ``fast/final``: what a figure column is titled."""
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def load_cam_model(path: str | Path, device: str | torch.device = "cpu") -> CamModel:
    """A fastdino checkpoint's teacher backbone (+ its probe classifier when it has one)."""
    from fastdino_cli import checkpoint

    path = Path(path)
    ckpt = checkpoint.load(path)
    name = checkpoint_display_name(path)
    if ckpt.get("probe"):
        from fastdino_cli.eval.classifier import load_probe_classifier

        clf = load_probe_classifier(path, device=device)
        return CamModel(
            name=name,
            backbone=_find_backbone(clf),
            classifier=clf,
            class_names=list(clf.class_names),
            mean=tuple(float(v) for v in torch.as_tensor(clf.mean).flatten()),
            std=tuple(float(v) for v in torch.as_tensor(clf.std).flatten()),
            image_size=int(clf.image_size),
            resize_size=int(clf.resize_size),
            preprocess=clf.preprocess,
            path=str(path),
        )
    backbone, _ = checkpoint.load_teacher_backbone(ckpt, device=device)
    recipe = default_recipe(ckpt)  # what `fastdino probe` would use: final global crop size
    return CamModel(
        name=name,
        backbone=backbone,
        mean=recipe.mean,
        std=recipe.std,
        image_size=recipe.crop_size,
        resize_size=recipe.resize_size,
        preprocess=eval_transform(recipe, normalize=False),
        path=str(path),
    )


@torch.no_grad()
def class_prototypes(
    model: CamModel,
    root: str | Path,
    classes: Sequence[str],
    transform: Callable,
    *,
    per_class: int | None = 64,
    batch_size: int = 32,
    exclude: Sequence[Path] = (),
) -> dict[str, Tensor]:
    """Mean L2-normalised embedding of (up to ``per_class``) images of each named class.

    ``exclude`` (the explained images) is left out, so no image is compared with a prototype
    that contains itself.
    """
    available = labelled_classes(root)
    missing = sorted(set(classes) - set(available))
    if missing:
        raise DataError(
            f"no images of class(es) {missing} in the prototype folder {root} "
            f"(it has {sorted(available)[:10]})"
        )
    protos: dict[str, Tensor] = {}
    for name in classes:
        skip = {Path(e).resolve() for e in exclude}
        files = [f for f in available[name] if f.resolve() not in skip]
        files = files[:per_class] if per_class else files
        if not files:
            raise DataError(
                f"class {name!r} of {root} has no images besides the explained ones; "
                "pass another folder with --prototype-data"
            )
        feats = []
        for i in range(0, len(files), batch_size):
            pixels = load_pixels([Sample(f) for f in files[i : i + batch_size]], transform)
            feats.append(torch.nn.functional.normalize(model.embed(pixels), dim=-1))
        protos[name] = torch.cat(feats).mean(0)
    return protos
