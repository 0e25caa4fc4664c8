"""Few-shot kNN and linear: ``--shots 1,2,5,10 --tries N`` (DINOv2's ``n_per_class_list`` /
``n_tries``).

For each shot count ``s`` and try ``t``, ``s`` training images per class are drawn (all of a
class's images when it has fewer) and both probes are run on that subset, evaluated on the whole
val set; the table reports mean and sample standard deviation (n - 1) over the tries.

The draw is DINOv2's ``filter_train``: a generator seeded with ``seed + t``, then, class by class
in class order, a random permutation of that class's train images (in folder order), of which
the first ``s`` are kept. With ``--seed 0`` try ``t`` is exactly DINOv2's try ``t``; and since
every shot count of one try reads the same permutations, the 1-shot subset of a try is inside
its 2-shot subset, and so on.

kNN on a subset is the full protocol (``knn.py``); a k larger than the subset is not reported
for that shot count (rather than silently capped to another k). The linear head
cannot be chosen on a held-out split of one image per class, so each few-shot head is the head
chosen on the full train's held-out split (its blocks, avgpool and lr: val is never seen)
trained from scratch on the subset with that head's own schedule: the same number of SGD steps
and the same cosine, only fewer images (FastDINOv2/DINOv2 define no few-shot linear protocol).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.features import Features
from fastdino_cli.eval.probe.head import score_head, train_head
from fastdino_cli.eval.probe.knn import KnnResult, knn_classify
from fastdino_cli.eval.probe.linear import HeadSpec, subset


def check_shots(shots: Sequence[int], tries: int) -> list[int]:
    """Sorted distinct shot counts; a non-positive value is a ``ConfigError``."""
    bad = [s for s in shots if int(s) < 1]
    if bad:
        raise ConfigError(f"--shots values must be positive integers, got {list(shots)}")
    if tries < 1:
        raise ConfigError(f"--tries {tries} must be at least 1")
    return sorted({int(s) for s in shots})


def few_shot_indices(labels: Tensor, shots: int, seed: int) -> Tensor:
    """Train indices of ``shots`` images per class (DINOv2's ``filter_train`` with ``seed``)."""
    g = torch.Generator().manual_seed(int(seed))
    labels = labels.cpu()
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(picked)


@dataclass
class FewShotTry:
    """One draw: its seed, how many images it holds, kNN per k and the linear head on val."""

    shots: int
    try_index: int
    seed: int
    num_train: int
    knn: list[KnnResult]
    linear_top1: float
    linear_top5: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "try": self.try_index,
            "seed": self.seed,
            "num_train": self.num_train,
            "knn": {str(r.k): {"top1": r.top1, "top5": r.top5} for r in self.knn},
            "linear": {"top1": self.linear_top1, "top5": self.linear_top5},
        }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


@dataclass
class FewShotResult:
    """Every try of one shot count, with their mean and standard deviation."""

    shots: int
    tries: list[FewShotTry] = field(default_factory=list)

    def stats(self) -> dict[str, tuple[float, float]]:
        """``{"knn10": (mean, std), ..., "linear": (mean, std)}`` of top-1 (%)."""
        out: dict[str, tuple[float, float]] = {}
        for i, r in enumerate(self.tries[0].knn):
            out[f"knn{r.k}"] = mean_std([t.knn[i].top1 for t in self.tries])
        out["linear"] = mean_std([t.linear_top1 for t in self.tries])
        return out

    def to_dict(self) -> dict[str, Any]:
        first = self.tries[0]
        knn = {}
        for i, r in enumerate(first.knn):
            m1, s1 = mean_std([t.knn[i].top1 for t in self.tries])
            m5, s5 = mean_std([t.knn[i].top5 for t in self.tries])
            knn[str(r.k)] = {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5}
        m1, s1 = mean_std([t.linear_top1 for t in self.tries])
        m5, s5 = mean_std([t.linear_top5 for t in self.tries])
        return {
            "shots": self.shots,
            "num_tries": len(self.tries),
            "num_train": first.num_train,
            "knn": knn,
            "linear": {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5},
            "tries": [t.to_dict() for t in self.tries],
        }


def few_shot(
    train: Features,
    val: Features,
    *,
    shots: Sequence[int],
    tries: int,
    ks: Sequence[int],
    head: HeadSpec,
    head_steps: int,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[FewShotResult]:
    """kNN and the ``head`` recipe on ``tries`` draws of each shot count (see module docstring).

    ``head_steps``: SGD steps of the chosen head (its epochs over the fit split).
    """
    num_classes = len(train.class_names)
    requested = {int(k) for k in ks}
    results = []
    for s in check_shots(shots, tries):
        res = FewShotResult(shots=s)
        for t in range(tries):
            idx = few_shot_indices(train.labels, s, seed + t)
            sub = subset(train, idx)
            knn = knn_classify(
                sub.last_cls, sub.labels, val.last_cls, val.labels, ks=ks,
                num_classes=num_classes, device=device,
            )  # fmt: skip
            weight, bias = train_head(
                sub, head, num_classes=num_classes, batch_size=batch_size,
                steps=head_steps, seed=seed + t, device=device,
            )  # fmt: skip
            lin = score_head(weight, bias, head, val, device=device)
            # a k above the subset size is left out (kNN would cap it to a smaller k)
            knn = [r for r in knn if r.k in requested]
            for r in knn:
                r.predictions = None  # per-sample predictions are kept for the full probe only
            res.tries.append(
                FewShotTry(s, t, seed + t, len(idx), knn, lin.top1, lin.top5)
            )  # fmt: skip
        results.append(res)
    return results


def grid_steps(num_fit: int, epochs: int, batch_size: int) -> int:
    """SGD steps of a head trained ``epochs`` passes over ``num_fit`` images."""
    return epochs * math.ceil(num_fit / batch_size)
