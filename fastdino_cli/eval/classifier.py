"""The stored probe head: written by ``fastdino probe``, read by every evaluation that classifies.

``corrupt-eval``, ``fourier-heatmap`` and ``gradcam`` need a classifier on top of a
self-supervised backbone. Retraining one in each would give each evaluation a different head;
instead ``fastdino probe`` chooses one linear head (on a split held out from train) and stores
it, with the exact feature recipe it was trained on, in the checkpoint's ``probe`` entry::

    probe = {
      "version": 1,
      "head": {"weight": (C, F) tensor, "bias": (C,) tensor},
      "n_last_blocks": int, "avgpool": bool, "lr": float,
      "recipe": {"resize_size", "crop_size", "mean", "std", "interpolation"},
      "precision": {"autocast": "bfloat16" | "float16" | None, "storage": "float16" | "float32"},
      "class_names": [str, ...],
      "accuracy": {"linear_top1", "linear_top5", "holdout_top1", "best_on_val_top1", "knn": ...},
      "protocol": {...how it was trained: folders, sizes, epochs, batch, holdout, seed...},
    }

``load_probe_classifier`` rebuilds backbone + head as one ``nn.Module`` that reproduces the
reported accuracy: it computes features with ``features.probe_features`` and ``head_input``,
the functions the head was trained on, under the precision policy the head's features were
extracted with (``features.Precision``: autocast + fp16 storage on CUDA, fp32 on CPU). Entries
written before the policy was recorded get the policy of the device in their ``protocol``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fastdino_cli import checkpoint as ckpt_mod
from fastdino_cli.errors import CheckpointError
from fastdino_cli.eval import features as _features
from fastdino_cli.eval.features import (
    FP32,
    FeatureRecipe,
    Precision,
    eval_transform,
    head_input,
    probe_features,
)

PROBE_VERSION = 1


class ProbeClassifier(nn.Module):
    """Frozen backbone + the stored linear head, differentiable (Grad-CAM needs that).

    The backbone runs under ``precision`` (the policy the head's features were extracted with)
    and its features are rounded as they were stored; the head itself runs in fp32. Grad-CAM
    sets ``precision`` to ``FP32`` for its gradients (``gradcam.cam``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Linear,
        *,
        n_last_blocks: int,
        avgpool: bool,
        recipe: FeatureRecipe,
        class_names: list[str],
        precision: Precision = FP32,
    ) -> None:
        super().__init__()
        self.precision = precision
        self.backbone = backbone
        self.head = head
        self.n_last_blocks = n_last_blocks
        self.avgpool = avgpool
        self.recipe = recipe
        self.class_names = list(class_names)
        self.image_size = recipe.crop_size
        self.resize_size = recipe.resize_size
        self.register_buffer("mean", torch.tensor(recipe.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(recipe.std).view(1, 3, 1, 1), persistent=False)
        self._transform = eval_transform(recipe, normalize=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def features(self, x: Tensor) -> Tensor:
        """Head input for normalised images (the representation the head was trained on), fp32."""
        with self.precision.context(x.device):
            cls, patch_mean = probe_features(self.backbone, x, self.n_last_blocks)
        cls, patch_mean = self.precision.round(cls), self.precision.round(patch_mean)
        return head_input(cls, patch_mean, self.n_last_blocks, self.avgpool)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) -> logits (B, C); the head runs in fp32."""
        with torch.autocast(x.device.type, enabled=False):
            return self.head(self.features(x).to(self.head.weight.dtype))

    def forward_pixels(self, x01: Tensor) -> Tensor:
        """Images in [0, 1] pixel space -> logits (normalisation applied here)."""
        return self.forward((x01 - self.mean) / self.std)

    def preprocess(self, pil_image: Image.Image) -> Tensor:
        """The eval transform without normalisation: PIL -> (3, crop, crop) in [0, 1]."""
        return self._transform(pil_image.convert("RGB"))


def make_probe_entry(
    *,
    weight: Tensor,
    bias: Tensor,
    n_last_blocks: int,
    avgpool: bool,
    lr: float,
    recipe: FeatureRecipe,
    class_names: list[str],
    accuracy: Mapping[str, Any],
    protocol: Mapping[str, Any],
    precision: Precision | None = None,
) -> dict[str, Any]:
    """The checkpoint's ``probe`` entry as plain data (loadable with ``weights_only=True``).

    ``precision``: the policy the features were extracted with; by default the policy of the
    device named in ``protocol["device"]`` (where ``fastdino probe`` extracted them).
    """
    if precision is None:
        precision = stored_precision({"protocol": protocol})
    if weight.shape[0] != len(class_names) or bias.shape != (len(class_names),):
        raise ValueError(f"head {tuple(weight.shape)} does not match {len(class_names)} classes")
    return {
        "version": PROBE_VERSION,
        "head": {
            "weight": weight.detach().to("cpu", torch.float32).contiguous().clone(),
            "bias": bias.detach().to("cpu", torch.float32).contiguous().clone(),
        },
        "n_last_blocks": int(n_last_blocks),
        "avgpool": bool(avgpool),
        "lr": float(lr),
        "recipe": recipe.to_dict(),
        "precision": precision.to_dict(),
        "class_names": [str(c) for c in class_names],
        "accuracy": _plain(accuracy),
        "protocol": _plain(protocol),
    }


def stored_precision(probe: Mapping[str, Any]) -> Precision:
    """The precision policy of a ``probe`` entry: recorded, else that of its protocol's device
    (entries written before the policy was recorded), else fp32."""
    if isinstance(probe.get("precision"), Mapping):
        return Precision.from_dict(probe["precision"])
    device = (probe.get("protocol") or {}).get("device")
    return _features.precision_for(str(device)) if device else FP32


def save_probe_entry(
    ckpt_path: str | Path, entry: Mapping[str, Any], out: str | Path | None = None
) -> Path:
    """Put ``entry`` into the checkpoint (atomic rewrite) or into a copy at ``out``."""
    ckpt = ckpt_mod.load(ckpt_path)
    ckpt["probe"] = dict(entry)
    return ckpt_mod.save(ckpt, out if out is not None else ckpt_path)


def load_probe_classifier(path: str | Path, device: str | torch.device = "cpu") -> ProbeClassifier:
    """Backbone from ``teacher`` + head from ``probe``; a checkpoint without a head is an error."""
    ckpt = ckpt_mod.load(path)
    probe = ckpt.get("probe")
    if not isinstance(probe, Mapping) or "head" not in probe:
        raise CheckpointError(
            f"{path} has no probe head; run `fastdino probe {path} --train ... --val ...` first"
        )
    if int(probe.get("version", 0)) > PROBE_VERSION:
        raise CheckpointError(
            f"{path} has a probe entry of version {probe.get('version')}, newer than this "
            f"fastdino understands ({PROBE_VERSION}); upgrade fastdino"
        )
    backbone, _ = ckpt_mod.load_teacher_backbone(ckpt, device=device)
    weight, bias = probe["head"]["weight"], probe["head"]["bias"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    model = ProbeClassifier(
        backbone,
        head,
        n_last_blocks=int(probe["n_last_blocks"]),
        avgpool=bool(probe["avgpool"]),
        recipe=FeatureRecipe.from_dict(probe["recipe"]),
        class_names=list(probe["class_names"]),
        precision=stored_precision(probe),
    )
    return model.to(device)


def _plain(obj: Any) -> Any:
    """Plain data for the checkpoint: dicts, lists, str, numbers, bools, None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)
