"""Weighted k-nearest-neighbour classification on frozen features (DINOv2's protocol).

For each val sample: cosine similarity to every train sample (L2-normalised features), the
``max(k)`` most similar neighbours, votes ``softmax(sim / T)`` over those neighbours (T = 0.07),
and class scores = the sum of the votes of the first ``k`` neighbours of each class. Top-1 is the
highest score (lowest class index on ties); a sample is top-5 correct when its class has a
positive score and fewer than five classes score strictly higher.

``class_mask`` restricts the vote to a subset of the classes (ImageNet-A / -R style: a test
folder holding 200 of the 1000 training classes): neighbours of the other classes still take
their share of the softmax, but those classes can never be predicted. Each result also carries
every val sample's top-1 class (``predictions``), for per-class accuracy and confusions.

Memory stays bounded: val is processed in chunks, and for each chunk the train set in shards
whose top-k are merged, so an ImageNet-sized (1.28M x 50k) similarity matrix never exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_KS = (10, 20, 100, 200)
TEMPERATURE = 0.07


@dataclass
class KnnResult:
    """Accuracies (in %) for one k."""

    k: int
    top1: float
    top5: float
    predictions: Tensor | None = field(default=None, repr=False, compare=False)
    """Top-1 class of every val sample (CPU, long), in val order."""


def topk_neighbours(
    query: Tensor, bank: Tensor, k: int, *, bank_chunk: int = 65536
) -> tuple[Tensor, Tensor]:
    """(similarities, indices) of the ``k`` most similar bank rows, merged over bank shards."""
    best_s = torch.full((query.shape[0], 0), float("-inf"), device=query.device)
    best_i = torch.zeros((query.shape[0], 0), dtype=torch.long, device=query.device)
    for start in range(0, bank.shape[0], bank_chunk):
        sims = (query @ bank[start : start + bank_chunk].T).float()
        s, i = sims.topk(min(k, sims.shape[1]), dim=1)
        cat_s = torch.cat([best_s, s], dim=1)
        cat_i = torch.cat([best_i, i + start], dim=1)
        best_s, order = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
        best_i = cat_i.gather(1, order)
    return best_s, best_i


def class_scores(
    sims: Tensor, neighbour_labels: Tensor, k: int, num_classes: int, temperature: float
) -> Tensor:
    """(Q, C) vote sums of the first ``k`` neighbours, votes softmax(sim/T) over all of them."""
    weights = torch.softmax(sims / temperature, dim=1)[:, :k]
    scores = torch.zeros(sims.shape[0], num_classes, device=sims.device)
    return scores.scatter_add_(1, neighbour_labels[:, :k], weights)


def correct_top1_top5(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample booleans: argmax == label; label scores > 0 with < 5 classes above it."""
    return _correct(scores, labels, scores.argmax(dim=1))


def _correct(scores: Tensor, labels: Tensor, pred: Tensor) -> tuple[Tensor, Tensor]:
    top1 = pred == labels
    own = scores.gather(1, labels[:, None])
    above = (scores > own).sum(dim=1)
    top5 = (own[:, 0] > 0) & (above < 5)
    return top1, top5


@torch.no_grad()
def knn_classify(
    train_feats: Tensor,
    train_labels: Tensor,
    val_feats: Tensor,
    val_labels: Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    num_classes: int | None = None,
    temperature: float = TEMPERATURE,
    val_chunk: int = 1024,
    bank_chunk: int = 65536,
    device: str | torch.device | None = None,
    class_mask: Tensor | None = None,
) -> list[KnnResult]:
    """Top-1 / top-5 (%) for each k (capped at the train size; duplicates after capping merged).

    ``class_mask`` (bool, one per class): only these classes can be predicted; every val label
    must be one of them.
    """
    if not ks:
        raise ValueError("need at least one k")
    device = torch.device(device) if device is not None else train_feats.device
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    eff_ks = sorted({min(int(k), train_feats.shape[0]) for k in ks})
    k_max = eff_ks[-1]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    bank = F.normalize(train_feats.to(device, torch.float32), dim=1).to(dtype)
    bank_labels = train_labels.to(device)
    hits1 = {k: 0 for k in eff_ks}
    hits5 = {k: 0 for k in eff_ks}
    preds: dict[int, list[Tensor]] = {k: [] for k in eff_ks}
    banned = None if class_mask is None else ~class_mask.to(device, torch.bool)
    for start in range(0, val_feats.shape[0], val_chunk):
        q = F.normalize(val_feats[start : start + val_chunk].to(device, torch.float32), dim=1)
        y = val_labels[start : start + val_chunk].to(device)
        sims, idx = topk_neighbours(q.to(dtype), bank, k_max, bank_chunk=bank_chunk)
        nl = bank_labels[idx]
        for k in eff_ks:
            scores = class_scores(sims, nl, k, num_classes, temperature)
            if banned is not None:
                scores[:, banned] = float("-inf")
            pred = scores.argmax(dim=1)
            c1, c5 = _correct(scores, y, pred)
            hits1[k] += int(c1.sum())
            hits5[k] += int(c5.sum())
            preds[k].append(pred.cpu())
    n = max(1, val_feats.shape[0])
    return [
        KnnResult(
            k,
            100.0 * hits1[k] / n,
            100.0 * hits5[k] / n,
            torch.cat(preds[k]) if preds[k] else torch.zeros(0, dtype=torch.long),
        )
        for k in eff_ks
    ]
