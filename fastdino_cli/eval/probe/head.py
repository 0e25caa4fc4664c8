"""One linear head outside the grid: its logits, its accuracy (optionally over a class subset),
and training it alone (``--refit`` on all of train, the few-shot heads on a few images per class).

The grid (``linear.py``) trains and scores 52 heads at once for the choice; once one head is
chosen, everything else ``fastdino probe`` reports about it goes through here, so the val
number, the per-class accuracies, the class-subset numbers and the refit all read the same
logits: ``head_input(features) @ weight.T + bias``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastdino_cli.eval.features import Features, head_input
from fastdino_cli.eval.probe.linear import HeadSpec, train_linear_grid


@dataclass
class HeadScore:
    """Accuracies (%) of one head on one labelled feature set, and its top-1 per sample."""

    top1: float
    top5: float
    predictions: Tensor
    """Top-1 class of every sample (CPU, long; indices into the training classes)."""


@torch.no_grad()
def head_logits(
    weight: Tensor, bias: Tensor, spec: HeadSpec, feats: Features, chunk: int = 4096
) -> Tensor:
    """(N, C) float32 logits of the head (``weight`` (C, d), ``bias`` (C,)) on ``feats``."""
    device = weight.device
    out = []
    for start in range(0, len(feats), chunk):
        cls = feats.cls[start : start + chunk].to(device).float()
        pm = feats.patch_mean[start : start + chunk].to(device).float()
        x = head_input(cls, pm, spec.n_last_blocks, spec.avgpool)
        out.append((x @ weight.float().T + bias.float()).cpu())
    if not out:
        return torch.zeros(0, weight.shape[0])
    return torch.cat(out)


def score_head(
    weight: Tensor,
    bias: Tensor,
    spec: HeadSpec,
    feats: Features,
    class_mask: Tensor | None = None,
    device: str | torch.device | None = None,
) -> HeadScore:
    """Top-1 / top-5 (%) of the head on ``feats``; with ``class_mask`` (bool, one per class)
    the logits of the other classes are dropped before the argmax (ImageNet-A/-R style).
    ``device``: where the matmuls run (default: where ``weight`` is)."""
    if device is not None:
        weight, bias = weight.to(device), bias.to(device)
    logits = head_logits(weight, bias, spec, feats)
    if class_mask is not None:
        logits[:, ~class_mask.cpu().bool()] = float("-inf")
        allowed = int(class_mask.sum())
    else:
        allowed = logits.shape[1]
    y = feats.labels.cpu()
    top = logits.topk(min(5, allowed), dim=1).indices
    n = max(1, len(y))
    return HeadScore(
        top1=100.0 * float((top[:, 0] == y).sum()) / n,
        top5=100.0 * float((top == y[:, None]).any(dim=1).sum()) / n,
        predictions=top[:, 0].clone(),
    )


def train_head(
    feats: Features,
    spec: HeadSpec,
    *,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 256,
    steps: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Train the one head ``spec`` (its blocks, avgpool and lr) with the grid's optimiser and
    schedule; returns (weight (C, d), bias (C,)) on CPU. ``steps``: see ``train_linear_grid``."""
    grid = train_linear_grid(
        feats,
        num_classes=num_classes,
        recipes=[(spec.n_last_blocks, spec.avgpool)],
        lrs=[spec.lr],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        steps=steps,
    )
    weight, bias = grid.head(0)
    return weight.cpu(), bias.cpu()
