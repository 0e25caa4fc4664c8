"""Test folders whose classes are a subset of the training classes (ImageNet-A / -R style).

ImageNet-A and ImageNet-R hold 200 of the 1000 ImageNet classes. The protocol of their papers
(Hendrycks et al.) evaluates the 1000-way classifier with its logits restricted to those 200
classes: the model can only answer one of the classes the test set has. Here a ``--test`` folder's
classes are matched to the training classes by folder name (``n01443537`` in both), the linear
head's logits and kNN's class scores of every other class are dropped before the argmax, and the
unrestricted linear top-1 is reported beside it. A test class that is not a training class is a
one-line error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastdino_cli.data.labelled import LabelledFolder
from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import Features
from fastdino_cli.eval.probe.knn import KnnResult


def subset_mapping(
    train_classes: list[str], test: LabelledFolder, *, what: str = "--test"
) -> tuple[Tensor, Tensor]:
    """(training index of each test class, bool mask over the training classes)."""
    index = {name: i for i, name in enumerate(train_classes)}
    unknown = [name for name in test.class_names if name not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        which = f"class {shown} is" if len(unknown) == 1 else f"classes {shown} are"
        raise DataError(
            f"{what} folder {test.root}: {which} not among the {len(train_classes)} "
            "classes of --train; a test folder may only hold training classes (matched by "
            "folder name)"
        )
    to_train = torch.tensor([index[n] for n in test.class_names], dtype=torch.long)
    mask = torch.zeros(len(train_classes), dtype=torch.bool)
    mask[to_train] = True
    return to_train, mask


def relabel(feats: Features, to_train: Tensor, train_classes: list[str]) -> Features:
    """The test features with labels in training-class indices."""
    return Features(
        feats.cls, feats.patch_mean, to_train[feats.labels.long()], list(train_classes),
        cached=feats.cached,
    )  # fmt: skip


@dataclass
class SubsetResult:
    """kNN and the linear head on one ``--test`` folder, logits restricted to its classes."""

    folder: str
    num_images: int
    num_classes: int
    knn: list[KnnResult]
    linear_top1: float
    linear_top5: float
    linear_top1_all_classes: float
    """The same head with all training classes allowed (for comparison; not the protocol)."""
    refit_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "knn": {str(r.k): {"top1": r.top1, "top5": r.top5} for r in self.knn},
            "linear": {
                "top1": self.linear_top1,
                "top5": self.linear_top5,
                "top1_all_classes": self.linear_top1_all_classes,
                "refit_top1": self.refit_top1,
            },
        }
