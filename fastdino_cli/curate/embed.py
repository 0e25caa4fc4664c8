"""Stage 1, embed: the teacher's L2-normalised CLS feature of every image, in resumable shards.

The feature is the one the kNN probe reads (``eval.features.probe_features``: last block's CLS
after the final norm), computed with the checkpoint's evaluation transform
(``eval.features.eval_transform``) and autocast policy (``autocast_for``), so curation and
evaluation see images the same way. Images are cut into shards of ``shard_size`` files; each
finished shard is on disk (``store.write_shard``) before the next starts, so a killed run resumes
at the first unfinished shard. A file that does not decode is skipped, counted and named in the
shard's marker, never fatal; a set of which nothing decodes is a ``DataError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fastdino_cli.curate import store
from fastdino_cli.data.images import UnreadableImage, load_rgb
from fastdino_cli.errors import DataError
from fastdino_cli.eval.features import FeatureRecipe, autocast_for, eval_transform, probe_features

Log = Callable[[str], None]


@dataclass
class ImageSet:
    """Images to embed: ``pool``, ``query`` (with classes) or ``eval``."""

    name: str
    files: list[Path]
    labels: list[int] | None = None
    class_names: list[str] | None = None


@dataclass
class EmbedStats:
    """What embedding one set did in this call (``seconds``/``embedded``: images/s)."""

    name: str
    files: int
    rows: int
    unreadable: int
    embedded: int
    seconds: float


class _Decoded(Dataset):
    """Transformed images; a file that does not decode comes back as its reason, not a raise."""

    def __init__(self, files: list[Path], recipe: FeatureRecipe) -> None:
        self.files, self.size, self.transform = files, recipe.crop_size, eval_transform(recipe)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str]:
        try:
            return self.transform(load_rgb(self.files[i])), i, ""
        except UnreadableImage as e:
            reason = str(e.__cause__ or e).strip().splitlines() or ["unreadable"]
            return torch.zeros(3, self.size, self.size), i, reason[0][:200]
        except (OSError, ValueError, RuntimeError) as e:  # e.g. a transform on a degenerate image
            return torch.zeros(3, self.size, self.size), i, f"{type(e).__name__}: {e}"[:200]


@torch.no_grad()
def embed_images(
    model: nn.Module,
    files: list[Path],
    recipe: FeatureRecipe,
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """(features of the readable files, their positions in ``files``, {position: reason})."""
    loader = DataLoader(
        _Decoded(files, recipe),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    feats, rows, bad = [], [], {}
    for x, idx, errs in loader:
        ok = torch.tensor([not e for e in errs], dtype=torch.bool)
        bad.update({int(i): e for i, e in zip(idx.tolist(), errs, strict=True) if e})
        if not ok.any():
            continue
        with autocast_for(device):
            cls, _ = probe_features(model, x[ok].to(device, non_blocking=True), 1)
        f = torch.nn.functional.normalize(cls[:, -1].float(), dim=-1)
        feats.append(f.cpu().numpy())
        rows += idx[ok].tolist()
    dim = int(getattr(model, "embed_dim", 0))
    out = np.concatenate(feats) if feats else np.zeros((0, dim), dtype=np.float32)
    return out.astype(np.float32, copy=False), rows, bad


def embed_set(
    model: nn.Module,
    images: ImageSet,
    folder: Path,
    recipe: FeatureRecipe,
    *,
    device: torch.device,
    batch_size: int = 128,
    shard_size: int = 4096,
    workers: int = 0,
    log: Log = lambda _: None,
) -> EmbedStats:
    """Embed ``images`` into ``folder`` shard by shard, skipping shards already on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = [str(p) for p in images.files]
    listed = folder / store.FILES
    if not listed.is_file() or listed.read_text().splitlines() != listing:
        (folder / store.DONE).unlink(missing_ok=True)  # a new or changed list: no shard is valid
        for old in folder.glob("shard_*.json"):
            old.unlink()
        store.write_lines(listed, listing)
    store.remove_stale_temp_files(folder)
    n_shards = max(1, -(-len(listing) // shard_size))
    embedded, seconds, rows, unreadable = 0, 0.0, 0, 0
    for i in range(n_shards):
        lo, hi = i * shard_size, min(len(listing), (i + 1) * shard_size)
        meta = store.shard_complete(folder, i)
        if meta is None:
            t0 = time.perf_counter()
            feats, ok, bad = embed_images(
                model,
                images.files[lo:hi],
                recipe,
                device=device,
                batch_size=batch_size,
                workers=workers,
            )
            store.write_shard(
                folder, i, feats, [lo + r for r in ok], {lo + k: v for k, v in bad.items()}
            )
            seconds += time.perf_counter() - t0
            embedded += hi - lo
            meta = {"rows": ok, "unreadable": bad}
            rate = embedded / max(seconds, 1e-9)
            log(f"embed {images.name}: shard {i + 1}/{n_shards} ({hi} images, {rate:.0f} img/s)")
        rows += len(meta["rows"])
        unreadable += len(meta["unreadable"])
    if rows == 0:
        raise DataError(
            f"none of the {len(listing)} {images.name} images could be read "
            f"(first: {listing[0] if listing else '-'}); check that they are valid images"
        )
    dim = max(int(np.load(folder / f"{store.shard_name(i)}.npy", mmap_mode="r").shape[1])
              for i in range(n_shards))  # fmt: skip
    info = {"files": len(listing), "rows": rows, "unreadable": unreadable, "shards": n_shards}
    done = {"info": {**info, "dim": dim}}
    if store.read_json(folder / store.DONE) != done:
        store.write_json(folder / store.DONE, done)
    return EmbedStats(images.name, len(listing), rows, unreadable, embedded, seconds)
