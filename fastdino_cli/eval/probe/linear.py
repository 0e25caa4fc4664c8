"""A grid of linear heads on cached frozen features, chosen on a split held out from train.

The grid follows DINOv2's linear evaluation: feature recipes ``n_last_blocks`` in {1, 4} x
``avgpool`` in {no, yes} (CLS tokens of the last n blocks, concatenated, plus the last block's
mean patch token) x 13 learning rates 1e-5 ... 0.1 scaled by batch/256; SGD momentum 0.9, no
weight decay, cosine schedule to 0 over all iterations, weights N(0, 0.01), bias 0. All heads
train together on the same mini-batches (one batched matmul per recipe).

FIX over the reference: the reference picks the best head on val, which is also its test set.
Here ``fit_and_select`` never sees val: it splits train (stratified, seeded), trains the grid on
the rest and picks the head with the best held-out top-1. ``linear_probe`` then evaluates that
one head on val. The best-on-val figure is still reported, labelled optimistic, to compare
with published numbers obtained the reference's way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import Features, head_input

DEFAULT_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)


@dataclass(frozen=True)
class HeadSpec:
    """One head of the grid: its feature recipe and (unscaled) learning rate."""

    n_last_blocks: int
    avgpool: bool
    lr: float

    def label(self) -> str:
        return f"{self.n_last_blocks}blk{'+avg' if self.avgpool else ''} lr={self.lr:g}"


@dataclass
class LinearGrid:
    """Trained heads, grouped by feature recipe: weight (L, d, C), bias (L, C) per recipe."""

    recipes: list[tuple[int, bool]]
    lrs: list[float]
    weights: list[Tensor]
    biases: list[Tensor]

    @property
    def specs(self) -> list[HeadSpec]:
        return [HeadSpec(n, a, lr) for n, a in self.recipes for lr in self.lrs]

    def head(self, index: int) -> tuple[Tensor, Tensor]:
        """(weight (C, d), bias (C,)) of head ``index`` in ``specs`` order."""
        r, l = divmod(index, len(self.lrs))
        return self.weights[r][l].T.contiguous(), self.biases[r][l].clone()


@dataclass
class LinearResult:
    """The chosen head and its numbers (accuracies in %)."""

    spec: HeadSpec
    weight: Tensor
    bias: Tensor
    holdout_top1: float
    val_top1: float
    val_top5: float
    best_on_val_top1: float
    best_on_val_spec: HeadSpec
    num_fit: int
    num_holdout: int
    holdout_table: list[tuple[str, float]] = field(default_factory=list)


def stratified_split(labels: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(fit indices, held-out indices): ~``fraction`` of each class held out, >= 1 kept to fit."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--holdout {fraction} must be strictly between 0 and 1")
    g = torch.Generator().manual_seed(seed)
    fit, hold = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_hold = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        hold.append(idx[:n_hold])
        fit.append(idx[n_hold:])
    hold_t, fit_t = torch.cat(hold).sort().values, torch.cat(fit).sort().values
    if len(hold_t) == 0:
        raise DataError("train set too small to hold out a selection split; add images per class")
    return fit_t, hold_t


class GridTrainer:
    """SGD state of every (recipe, lr) head; ``step`` updates all heads on one mini-batch.

    Gradients are the closed form of the softmax cross-entropy (no autograd graph): for logits
    z = xW + b, d(mean CE)/dz = (softmax(z) - onehot(y)) / B, summed independently per head.
    """

    def __init__(
        self,
        *,
        in_dims: Sequence[int],
        recipes: Sequence[tuple[int, bool]],
        lrs: Sequence[float],
        num_classes: int,
        batch_size: int,
        total_steps: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.recipes, self.lrs, self.num_classes = list(recipes), list(lrs), num_classes
        self.total, self.t = max(1, total_steps), 0
        self.lr_vec = torch.tensor(lrs, device=self.device) * batch_size / 256.0
        g = torch.Generator().manual_seed(seed)
        L = len(lrs)
        self.weights = [
            torch.randn(L, d, num_classes, generator=g).mul_(0.01).to(self.device) for d in in_dims
        ]
        self.biases = [torch.zeros(L, num_classes, device=self.device) for _ in in_dims]
        self.bufs = [(torch.zeros_like(w), torch.zeros_like(b))
                     for w, b in zip(self.weights, self.biases, strict=True)]  # fmt: skip

    @torch.no_grad()
    def step(self, cls: Tensor, patch_mean: Tensor, y: Tensor) -> None:
        lr_t = self.lr_vec * 0.5 * (1.0 + math.cos(math.pi * self.t / self.total))
        cls, patch_mean = cls.to(self.device).float(), patch_mean.to(self.device).float()
        y = y.to(self.device)
        rows = torch.arange(len(y), device=self.device)
        for r, (n_blocks, avgpool) in enumerate(self.recipes):
            x = head_input(cls, patch_mean, n_blocks, avgpool)
            logits = torch.matmul(x, self.weights[r]) + self.biases[r][:, None]  # (L, B, C)
            g_logits = torch.softmax(logits, dim=-1)
            g_logits[:, rows, y] -= 1.0
            g_logits /= len(y)
            grads = (torch.matmul(x.T, g_logits), g_logits.sum(dim=1))
            for p, grad, buf in zip(
                (self.weights[r], self.biases[r]), grads, self.bufs[r], strict=True
            ):
                buf.mul_(0.9).add_(grad)  # torch.optim.SGD, momentum 0.9, dampening 0
                p.sub_(buf * lr_t.view(-1, *([1] * (p.dim() - 1))))
        self.t += 1

    def grid(self) -> LinearGrid:
        return LinearGrid(self.recipes, self.lrs, self.weights, self.biases)


def input_dims(recipes: Sequence[tuple[int, bool]], dim: int) -> list[int]:
    """Head input width of each recipe for backbone width ``dim``."""
    return [dim * n_blocks + (dim if avgpool else 0) for n_blocks, avgpool in recipes]


def train_linear_grid(
    feats: Features,
    *,
    num_classes: int,
    recipes: Sequence[tuple[int, bool]],
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    steps: int | None = None,
) -> LinearGrid:
    """Train every (recipe, lr) head together with SGD momentum 0.9 and a cosine schedule.

    ``epochs`` passes over ``feats`` by default; ``steps`` fixes the number of SGD steps instead
    (the few-shot heads: the chosen head's schedule on fewer images), passing over the data as
    often as it takes (each pass a fresh permutation, the last pass cut short).
    """
    device = torch.device(device)
    n = len(feats)
    if n == 0:
        raise DataError("no training images to fit a linear head on")
    total = epochs * math.ceil(n / batch_size) if steps is None else int(steps)
    trainer = GridTrainer(
        in_dims=input_dims(recipes, feats.cls.shape[-1]), recipes=recipes, lrs=lrs,
        num_classes=num_classes, batch_size=batch_size, total_steps=total, seed=seed,
        device=device,
    )  # fmt: skip
    cls, pm, y_all = feats.cls.to(device), feats.patch_mean.to(device), feats.labels.to(device)
    g = torch.Generator().manual_seed(seed + 1)
    while trainer.t < total:
        perm = torch.randperm(n, generator=g).to(device)
        for start in range(0, n, batch_size):
            if trainer.t >= total:
                break
            idx = perm[start : start + batch_size]
            trainer.step(cls[idx], pm[idx], y_all[idx])
    return trainer.grid()


@torch.no_grad()
def evaluate_grid(grid: LinearGrid, feats: Features, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Top-1 and top-5 (%) of every head in ``grid.specs`` order, each of shape (n_heads,)."""
    device = grid.weights[0].device
    top1 = torch.zeros(len(grid.specs), device=device)
    top5 = torch.zeros(len(grid.specs), device=device)
    L = len(grid.lrs)
    for start in range(0, len(feats), chunk):
        cls = feats.cls[start : start + chunk].to(device).float()
        pm = feats.patch_mean[start : start + chunk].to(device).float()
        y = feats.labels[start : start + chunk].to(device)
        for r, (n_blocks, avgpool) in enumerate(grid.recipes):
            x = head_input(cls, pm, n_blocks, avgpool)
            logits = torch.matmul(x, grid.weights[r]) + grid.biases[r][:, None]
            k = min(5, logits.shape[-1])
            pred = logits.topk(k, dim=-1).indices  # (L, B, k)
            top1[r * L : (r + 1) * L] += (pred[..., 0] == y).sum(dim=1).float()
            top5[r * L : (r + 1) * L] += (pred == y[None, :, None]).any(-1).sum(dim=1).float()
    n = max(1, len(feats))
    return (100.0 * top1 / n).cpu(), (100.0 * top5 / n).cpu()


def subset(feats: Features, idx: Tensor) -> Features:
    return Features(feats.cls[idx], feats.patch_mean[idx], feats.labels[idx], feats.class_names)


def fit_and_select(
    train: Features,
    *,
    recipes: Sequence[tuple[int, bool]],
    lrs: Sequence[float] = DEFAULT_LRS,
    holdout: float = 0.1,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[LinearGrid, int, Tensor, int, int]:
    """Train the grid on train minus a held-out split; pick by held-out top-1. Never sees val.

    Returns (grid, chosen head index, held-out top-1 of every head, n fit, n held out).
    """
    fit_idx, hold_idx = stratified_split(train.labels, holdout, seed)
    grid = train_linear_grid(
        subset(train, fit_idx),
        num_classes=len(train.class_names),
        recipes=recipes,
        lrs=lrs,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    hold_top1, _ = evaluate_grid(grid, subset(train, hold_idx))
    chosen = int(torch.argmax(hold_top1))  # first maximum: the lowest lr of the first recipe
    return grid, chosen, hold_top1, len(fit_idx), len(hold_idx)


def linear_probe(
    train: Features,
    val: Features,
    *,
    n_last_blocks: Sequence[int] = (1, 4),
    avgpool: Sequence[bool] = (False, True),
    lrs: Sequence[float] = DEFAULT_LRS,
    holdout: float = 0.1,
    epochs: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LinearResult:
    """Grid on train, choice on the held-out split, one evaluation of the choice on val."""
    grid, chosen, hold_top1, n_fit, n_hold = fit_and_select(
        train,
        recipes=grid_recipes(n_last_blocks, avgpool, train.cls.shape[1]),
        lrs=lrs,
        holdout=holdout,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
    )
    return report_on_val(grid, chosen, hold_top1, val, n_fit, n_hold)


def grid_recipes(
    n_last_blocks: Sequence[int], avgpool: Sequence[bool], available: int
) -> list[tuple[int, bool]]:
    """(blocks, avgpool) pairs of the grid, block counts capped at what was extracted."""
    blocks = sorted({min(int(b), available) for b in n_last_blocks})
    return [(b, a) for b in blocks for a in avgpool]


def report_on_val(
    grid: LinearGrid, chosen: int, hold_top1: Tensor, val: Features, n_fit: int, n_hold: int
) -> LinearResult:
    """The one evaluation of the chosen head on val (+ the optimistic best-on-val figure)."""
    val_top1, val_top5 = evaluate_grid(grid, val)
    specs = grid.specs
    best_val = int(torch.argmax(val_top1))
    weight, bias = grid.head(chosen)
    return LinearResult(
        spec=specs[chosen],
        weight=weight.cpu(),
        bias=bias.cpu(),
        holdout_top1=float(hold_top1[chosen]),
        val_top1=float(val_top1[chosen]),
        val_top5=float(val_top5[chosen]),
        best_on_val_top1=float(val_top1[best_val]),
        best_on_val_spec=specs[best_val],
        num_fit=n_fit,
        num_holdout=n_hold,
        holdout_table=[(s.label(), float(a)) for s, a in zip(specs, hold_top1, strict=True)],
    )
