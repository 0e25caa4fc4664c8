"""Per-class accuracy and the confusions that cost most, from one classifier's val predictions.

A single top-1 number hides which classes a model gets wrong. ``per_class`` gives, for every
class, how many val images it has and the top-1 (%) of the linear head and of kNN at each k on
them (DINOv2's ``linear_per_class.py`` logs the same per-class accuracy for the linear head);
``top_confusions`` the (true class, predicted class) pairs with the most val images, each with
its share of the true class and its cost: the points of overall top-1 lost to that one pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(labels.cpu().long(), minlength=num_classes)


def per_class_top1(predictions: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    """Top-1 (%) of each class over its val images; None for a class without val images."""
    labels, predictions = labels.cpu().long(), predictions.cpu().long()
    total = class_counts(labels, num_classes)
    hits = torch.bincount(labels[predictions == labels], minlength=num_classes)
    return [
        100.0 * int(h) / int(n) if int(n) else None
        for h, n in zip(hits.tolist(), total.tolist(), strict=True)
    ]


@dataclass
class Confusion:
    """``count`` val images of class ``true`` predicted as ``predicted``."""

    true: str
    predicted: str
    count: int
    share_of_class: float
    """% of the true class's val images."""
    cost: float
    """Points of overall top-1 lost to this pair: count / all val images, in %."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "true": self.true,
            "predicted": self.predicted,
            "count": self.count,
            "share_of_class": self.share_of_class,
            "cost": self.cost,
        }


def top_confusions(
    predictions: Tensor, labels: Tensor, class_names: list[str], n: int = 10
) -> list[Confusion]:
    """The ``n`` off-diagonal (true, predicted) pairs with most images; ties by class order."""
    c = len(class_names)
    labels, predictions = labels.cpu().long(), predictions.cpu().long()
    matrix = torch.bincount(labels * c + predictions, minlength=c * c).reshape(c, c)
    matrix.fill_diagonal_(0)
    total = class_counts(labels, c)
    flat = matrix.flatten()
    # stable sort on -count keeps the row-major (true, predicted) order among equal counts
    order = torch.sort(-flat, stable=True).indices
    out = []
    for i in order.tolist()[: max(0, n)]:
        count = int(flat[i])
        if count == 0:
            break
        t, p = divmod(i, c)
        out.append(
            Confusion(
                true=class_names[t],
                predicted=class_names[p],
                count=count,
                share_of_class=100.0 * count / int(total[t]),
                cost=100.0 * count / max(1, len(labels)),
            )
        )
    return out
