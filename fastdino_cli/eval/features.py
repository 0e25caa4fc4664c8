"""Frozen teacher features, shared by every evaluation, cached on disk.

What one image yields (``probe_features``): the CLS token of each of the last ``n`` blocks after
the final norm (DINOv2's ``get_intermediate_layers(n, return_class_token=True)``) and the mean
of the last block's patch tokens. The linear heads read a concatenation of these
(``head_input``), kNN reads the last block's CLS. ``classifier.ProbeClassifier`` calls the same
two functions, so a stored head sees exactly the features it was trained on.

The eval transform is Resize(shorter side = ``resize_size``, bicubic) -> CenterCrop(``crop_size``)
-> ToTensor -> Normalize. By default the crop is the checkpoint's final-stage global crop size
(the resolution the backbone finished training at) and resize = crop * 256 / 224.

Precision (``Precision``, ``precision_for``): on CUDA the backbone runs under bf16 autocast (fp16
where bf16 is unsupported) and features are stored in fp16; on CPU everything is fp32. The
policy is recorded with every probe head and re-applied by ``classifier.ProbeClassifier``, the
one classifier of ``corrupt-eval``, ``fourier-heatmap`` and ``gradcam``.

Extraction is slow on real datasets, so features are cached under ``$FASTDINO_CACHE/features``
(default ``~/.cache/fastdino/features``) keyed by a hash of the backbone weights and
architecture, the data (file list, sizes, modification times), the transform and the number of
blocks. Rewriting the checkpoint's ``probe`` entry does not change the key; new weights do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from fastdino_cli import console
from fastdino_cli.curriculum import final_global_crops_size
from fastdino_cli.data.labelled import LabelledFolder
from fastdino_cli.errors import DataError
from fastdino_cli.fileio import atomic_write

CACHE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureRecipe:
    """How images become backbone inputs (stored with every probe head)."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureRecipe:
        return cls(
            resize_size=int(d["resize_size"]),
            crop_size=int(d["crop_size"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bicubic")),
        )


def default_recipe(
    ckpt: Mapping[str, Any], *, resize: int | None = None, crop: int | None = None
) -> FeatureRecipe:
    """Crop = final-stage global crop size (else ``model.img_size``); resize = crop*256/224."""
    config = ckpt.get("config") or {}
    if crop is None:
        crop = _final_global_crop(config) or int((ckpt.get("arch") or {}).get("img_size", 224))
    if resize is None:
        resize = int(round(crop * 256 / 224))
    crops = config.get("crops") or {}
    mean = tuple(crops.get("mean", IMAGENET_MEAN))
    std = tuple(crops.get("std", IMAGENET_STD))
    return FeatureRecipe(resize_size=int(resize), crop_size=int(crop), mean=mean, std=std)  # type: ignore[arg-type]


def _final_global_crop(config: Mapping[str, Any]) -> int | None:
    size = final_global_crops_size(config)
    if size:
        return size
    img = (config.get("model") or {}).get("img_size")
    return int(img) if img else None


def eval_transform(recipe: FeatureRecipe, *, normalize: bool = True) -> T.Compose:
    """PIL image -> (3, crop, crop) float tensor; in [0, 1] when ``normalize`` is False."""
    interp = T.InterpolationMode(recipe.interpolation)
    steps: list[Any] = [
        T.Resize(recipe.resize_size, interpolation=interp, antialias=True),
        T.CenterCrop(recipe.crop_size),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
    ]
    if normalize:
        steps.append(T.Normalize(mean=list(recipe.mean), std=list(recipe.std)))
    return T.Compose(steps)


def probe_features(model: nn.Module, x: Tensor, n_blocks: int) -> tuple[Tensor, Tensor]:
    """(CLS of the last ``n_blocks`` blocks, oldest first: (B, n, D); mean patch token (B, D))."""
    layers = model.get_intermediate_layers(x, n=n_blocks, norm=True)
    cls = torch.stack([c for _, c in layers], dim=1)
    patch_mean = layers[-1][0].mean(dim=1)
    return cls, patch_mean


def head_input(cls: Tensor, patch_mean: Tensor, n_last_blocks: int, avgpool: bool) -> Tensor:
    """Linear-head input: CLS of the last ``n_last_blocks`` concatenated (+ mean patch token)."""
    if n_last_blocks > cls.shape[1]:
        raise ValueError(f"asked for {n_last_blocks} blocks, features hold {cls.shape[1]}")
    parts = [cls[:, -n_last_blocks:].flatten(1)]
    if avgpool:
        parts.append(patch_mean)
    return torch.cat(parts, dim=1)


@dataclass
class Features:
    """Features of a labelled folder: ``cls`` (N, n_blocks, D), ``patch_mean`` (N, D)."""

    cls: Tensor
    patch_mean: Tensor
    labels: Tensor
    class_names: list[str]
    cached: bool = False

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def last_cls(self) -> Tensor:
        return self.cls[:, -1]


def model_hash(model: nn.Module) -> str:
    """SHA-256 of the backbone's architecture and weights (what the features depend on)."""
    h = hashlib.sha256()
    arch = model.arch_dict() if hasattr(model, "arch_dict") else {}
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("FASTDINO_CACHE") or Path.home() / ".cache" / "fastdino"
    return Path(base) / "features"


class ImageDataset(Dataset):
    """Decoded, transformed images; a decode failure travels back as a message, not a raise."""

    def __init__(self, folder: LabelledFolder, transform: T.Compose, size: int) -> None:
        self.folder, self.transform, self.size = folder, transform, size

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str]:
        try:
            return self.transform(self.folder.load_rgb(i)), self.folder.labels[i], ""
        except Exception as e:  # reported as one DataError line by the main process
            return torch.zeros(3, self.size, self.size), -1, str(e)


def raise_decode_errors(errors: Sequence[str]) -> None:
    """Turn the first decode failure of a batch from ``ImageDataset`` into a ``DataError``."""
    bad = [e for e in errors if e]
    if bad:
        raise DataError(bad[0])


@dataclass(frozen=True)
class Precision:
    """The one precision policy of a checkpoint's features, wherever they are computed.

    ``fastdino probe`` extracts features under ``autocast`` (bf16 on CUDA, fp16 where bf16 is
    unsupported, none on CPU) and caches them as ``storage`` (fp16 on CUDA, fp32 on CPU); the
    linear head then runs in fp32 on those stored values. The policy is recorded in the
    checkpoint's ``probe`` entry, and ``classifier.ProbeClassifier`` applies the same two steps
    before its head, so ``corrupt-eval``, ``fourier-heatmap`` and ``gradcam`` classify exactly
    as the probe that reported the head's accuracy did.
    """

    autocast: str | None
    """``"bfloat16"``, ``"float16"`` or None (no autocast: fp32)."""
    storage: str = "float32"
    """dtype the features are rounded to before the head (``"float16"`` or ``"float32"``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"autocast": self.autocast, "storage": self.storage}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Precision:
        auto = d.get("autocast")
        return cls(autocast=str(auto) if auto else None, storage=str(d.get("storage", "float32")))

    @property
    def storage_dtype(self) -> torch.dtype:
        return getattr(torch, self.storage)

    def context(self, device: str | torch.device):
        """The autocast region of the backbone forward on ``device`` (nothing when fp32)."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(torch.device(device).type, dtype=getattr(torch, self.autocast))

    def round(self, features: Tensor) -> Tensor:
        """Features as the head saw them: rounded to ``storage``, returned in fp32."""
        return features.to(self.storage_dtype).float()


FP32 = Precision(autocast=None, storage="float32")


def precision_for(device: str | torch.device) -> Precision:
    """The policy for features extracted on ``device``: bf16 autocast + fp16 storage on CUDA
    (fp16 autocast where bf16 is unsupported), fp32 everywhere else."""
    if torch.device(device).type != "cuda":
        return FP32
    bf16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    return Precision(autocast="bfloat16" if bf16 else "float16", storage="float16")


def autocast_for(device: torch.device):
    """The autocast region of ``precision_for(device)`` (bf16 on CUDA; nothing on CPU)."""
    return precision_for(device).context(device)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    folder: LabelledFolder,
    recipe: FeatureRecipe,
    *,
    n_blocks: int = 4,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    use_cache: bool = True,
    backbone_hash: str | None = None,
    desc: str = "features",
) -> Features:
    """Features of every image in ``folder`` (cached; see the module docstring for the key)."""
    device = torch.device(device)
    n_blocks = min(n_blocks, len(model.blocks))
    key = None
    if use_cache:
        key = _cache_key(backbone_hash or model_hash(model), folder, recipe, n_blocks, device)
        hit = _read_cache(cache_dir() / f"{key}.pt", folder.class_names)
        if hit is not None:
            return hit
    model.eval().to(device)
    loader = DataLoader(
        ImageDataset(folder, eval_transform(recipe), recipe.crop_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    policy = precision_for(device)
    cls_out, patch_out, label_out = [], [], []
    with _progress(desc, len(folder)) as advance:
        for x, y, err in loader:
            raise_decode_errors(err)
            with policy.context(device):
                cls, patch_mean = probe_features(model, x.to(device, non_blocking=True), n_blocks)
            cls_out.append(cls.to("cpu", policy.storage_dtype))
            patch_out.append(patch_mean.to("cpu", policy.storage_dtype))
            label_out.append(y)
            advance(len(y))
    feats = Features(
        cls=torch.cat(cls_out),
        patch_mean=torch.cat(patch_out),
        labels=torch.cat(label_out).long(),
        class_names=list(folder.class_names),
    )
    if key is not None:
        _write_cache(cache_dir() / f"{key}.pt", feats)
    return feats


def _cache_key(
    mhash: str, folder: LabelledFolder, recipe: FeatureRecipe, n_blocks: int, device: torch.device
) -> str:
    parts = {
        "version": CACHE_VERSION,
        "model": mhash,
        "data": folder.fingerprint(),
        "recipe": recipe.to_dict(),
        "n_blocks": n_blocks,
        "precision": precision_for(device).to_dict(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path, class_names: Sequence[str]) -> Features | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt cache entry is recomputed, never trusted
        return None
    if d.get("class_names") != list(class_names):
        return None
    return Features(d["cls"], d["patch_mean"], d["labels"], list(d["class_names"]), cached=True)


def _write_cache(path: Path, feats: Features) -> None:
    """Atomic write; a cache that cannot be written only costs time next run."""
    try:
        payload = {
            "cls": feats.cls,
            "patch_mean": feats.patch_mean,
            "labels": feats.labels,
            "class_names": feats.class_names,
        }
        atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as e:
        console.warn(f"feature cache not written ({e})")


class _progress:
    """A transient bar in the house style on a terminal (``console.Bar``), silence elsewhere
    (logs, CI, tests)."""

    def __init__(self, desc: str, total: int) -> None:
        self.bar = console.Bar(desc, total, unit="images", transient=True)

    def __enter__(self):
        self.bar.start()
        return self.bar.advance

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
