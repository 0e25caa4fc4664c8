"""kNN accuracy of a checkpoint's teacher on the demo data vs the same architecture at random init.

Usage: python benchmarks/demo_knn.py RUN_DIR/final.pt [--data DIR] [--k 20]
Prints one JSON line: trained and random-init top-1 (k-NN, cosine, softmax(sim/0.07) votes), the
checkpoint, hardware and date. The demo data is built offline if missing (``data.train: demo``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import emit, machine  # noqa: E402
from fastdino_cli.checkpoint import load_teacher_backbone  # noqa: E402
from fastdino_cli.data.demo import resolve_data_root  # noqa: E402
from fastdino_cli.data.images import load_rgb  # noqa: E402
from fastdino_cli.data.labelled import scan_labelled_folder  # noqa: E402
from fastdino_cli.model.vit import build_vit_from_arch  # noqa: E402

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def _images(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    lab = scan_labelled_folder(root)
    xs = []
    for f in lab.paths:
        img = load_rgb(f).resize((size, size))
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        xs.append((x - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1))
    return torch.stack(xs), torch.tensor(lab.labels)


@torch.no_grad()
def _features(model, x):
    return F.normalize(torch.cat([model(b) for b in x.split(128)]), dim=-1)


def knn_top1(train_f, train_y, val_f, val_y, k=20, temp=0.07) -> float:
    sim = val_f @ train_f.t()
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(val_f.shape[0], int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[idx], (top / temp).exp())
    return float((votes.argmax(1) == val_y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default="demo")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    train_x, train_y = _images(resolve_data_root(args.data, "train"), args.size)
    val_x, val_y = _images(resolve_data_root(args.data, "val"), args.size)
    trained, ckpt = load_teacher_backbone(args.checkpoint)
    torch.manual_seed(int(ckpt["config"]["train"]["seed"]))
    random_init = build_vit_from_arch(ckpt["arch"]).eval()
    out = {"checkpoint": args.checkpoint, "k": args.k}
    for name, model in (("trained", trained), ("random_init", random_init)):
        out[f"knn_top1_{name}"] = round(
            knn_top1(_features(model, train_x), train_y, _features(model, val_x), val_y, args.k),
            4,
        )
    out["hardware"] = machine("cpu")
    emit(out)


if __name__ == "__main__":
    main()
