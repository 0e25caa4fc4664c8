"""The embedded demo dataset, built offline from photographs that scikit-image ships.

One class per source photograph. Each sample is a random square crop of its photograph with its
own random photometric transformation (hue rotation, saturation, brightness, contrast, colour
cast, grayscale with some probability), so colour statistics alone cannot solve the task: with
plain crops, six per-channel numbers already classify such photographs at ~97%, and pretraining
could show nothing. Train and val crops come from disjoint regions of each photograph (the first
70% and the last 30% along its longer side), so no val image is a near-duplicate of a train image.

Generation is deterministic: the same seed writes byte-identical PNG files. A folder being built
is marked first by ``.fastdino-demo-data``: only such a folder (or a new or empty one) is ever
built into, because a rebuild replaces ``train/`` and ``val/``; a folder holding anything else
(a user's own ``train/``) is refused and left untouched. A finished folder is marked by
``.complete`` (holding the generation parameters) and reused by later calls.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastdino_cli.config import DEMO_DATA_ALIAS
from fastdino_cli.errors import DataError
from fastdino_cli.fileio import atomic_write, write_text

# (class name, skimage.data function, licence note)
SOURCES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "astronaut", "NASA, public domain"),
    ("cat", "chelsea", "Stefan van der Walt, CC0"),
    ("coffee", "coffee", "Rachel Michetti, CC0"),
    ("rocket", "rocket", "SpaceX, public domain (CC0)"),
    ("hubble", "hubble_deep_field", "NASA/ESA Hubble, public domain"),
    ("retina", "retina", "Hakan Yalcin, CC0 1.0"),
    ("ihc", "immunohistochemistry", "Center for Human Genetics, no known copyright restrictions"),
    ("motorcycle", "stereo_motorcycle", "Middlebury stereo data set (scikit-image bundle)"),
    ("camera", "camera", "cameraman, CC0 (scikit-image)"),
    ("brick", "brick", "CC0Textures, CC0"),
)

TRAIN_FRACTION = 0.7
GENERATOR_VERSION = 1
MARKER = ".fastdino-demo-data"
"""Written first into a folder this module builds: only a folder holding it is ever replaced."""
COMPLETE = ".complete"
"""Written last, holding the generation parameters: a folder with the same ones is reused."""


@dataclass
class DemoDatasetInfo:
    """Where the demo data is and how much of it there is."""

    root: Path
    class_names: list[str]
    num_train: int
    num_val: int
    reused: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def val(self) -> Path:
        return self.root / "val"


def _load_source(func_name: str) -> np.ndarray:
    """A bundled photograph as HxWx3 uint8 (grayscale sources are replicated to RGB)."""
    try:
        from skimage import data as skdata
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency
        raise DataError("scikit-image is needed for the demo data: pip install scikit-image") from e
    img = getattr(skdata, func_name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return img


def _region(img: np.ndarray, split: str) -> np.ndarray:
    """The part of the photograph a split may crop from (disjoint along the longer side)."""
    h, w = img.shape[:2]
    if w >= h:
        cut = int(round(w * TRAIN_FRACTION))
        return img[:, :cut] if split == "train" else img[:, cut:]
    cut = int(round(h * TRAIN_FRACTION))
    return img[:cut] if split == "train" else img[cut:]


def _random_crop(region: np.ndarray, full_min_side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = region.shape[:2]
    side = int(rng.uniform(0.12, 0.3) * full_min_side)
    side = max(8, min(side, h, w))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return region[y : y + side, x : x + side]


def _photometric(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-sample colour transformation in float [0, 1]; returns uint8."""
    x = rgb.astype(np.float32) / 255.0
    # hue rotation: rotate the chroma around the gray axis by a random angle
    angle = rng.uniform(0, 2 * np.pi)
    x = _rotate_hue(x, angle)
    gray = x.mean(axis=-1, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.2, 1.6)  # saturation
    x = x * rng.uniform(0.85, 1.15, size=3)  # colour cast
    x = (x - x.mean()) * rng.uniform(0.5, 1.5) + x.mean()  # contrast
    x = x * rng.uniform(0.55, 1.45)  # brightness
    if rng.random() < 0.3:
        x = np.repeat(x.mean(axis=-1, keepdims=True), 3, axis=-1)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _rotate_hue(x: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of RGB vectors around the (1, 1, 1) axis."""
    k = np.ones(3) / np.sqrt(3)
    c, s = np.cos(angle), np.sin(angle)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = c * np.eye(3) + s * kx + (1 - c) * np.outer(k, k)
    return x @ rot.T.astype(np.float32)


def build_demo_dataset(
    out_dir: str | Path,
    *,
    size: int = 64,
    train_per_class: int = 48,
    val_per_class: int = 16,
    seed: int = 0,
) -> DemoDatasetInfo:
    """Write ``out_dir/{train,val}/<class>/*.png`` (and ``CREDITS.txt``); reuse a finished one."""
    if size < 8:
        raise DataError(f"demo image size {size} is too small; use at least 8 px")
    if train_per_class < 1 or val_per_class < 1:
        raise DataError("the demo data needs at least one train and one val image per class")
    root = Path(out_dir)
    params = {
        "version": GENERATOR_VERSION,
        "size": size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "classes": [name for name, _, _ in SOURCES],
    }
    stamp = root / COMPLETE
    names = [name for name, _, _ in SOURCES]
    if _read_json(stamp) == params:
        return DemoDatasetInfo(
            root, names, train_per_class * len(names), val_per_class * len(names), True
        )
    check_replaceable(root)
    write_text(root / MARKER, json.dumps({"built_by": "fastdino data demo", **params}) + "\n")
    stamp.unlink(missing_ok=True)
    for split in ("train", "val"):  # only ever in a folder fastdino built (the marker says so)
        if (root / split).exists():
            shutil.rmtree(root / split)

    counts = {"train": train_per_class, "val": val_per_class}
    for class_idx, (name, func, _) in enumerate(SOURCES):
        img = _load_source(func)
        full_min = min(img.shape[:2])
        for split_idx, split in enumerate(("train", "val")):
            region = _region(img, split)
            rng = np.random.default_rng([seed, class_idx, split_idx])
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[split]):
                crop = _random_crop(region, full_min, rng)
                pil = Image.fromarray(np.ascontiguousarray(crop)).resize(
                    (size, size), Image.Resampling.BICUBIC, reducing_gap=None
                )
                out = _photometric(np.asarray(pil), rng)
                png = Image.fromarray(out)
                atomic_write(  # not durable: .complete, written last, says the set is whole
                    folder / f"{name}_{i:04d}.png",
                    lambda f, im=png: im.save(f, format="PNG", optimize=False),
                    durable=False,
                )
    write_text(root / "CREDITS.txt", _credits())
    write_text(stamp, json.dumps(params))
    return DemoDatasetInfo(
        root, names, train_per_class * len(names), val_per_class * len(names), False
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def built_by_fastdino(root: Path) -> bool:
    """Whether ``root`` holds fastdino's marker (or the ``.complete`` stamp of a folder that an
    earlier version built before the marker existed)."""
    if (root / MARKER).is_file():
        return True
    legacy = _read_json(root / COMPLETE)
    return isinstance(legacy, dict) and {"version", "classes", "seed"} <= legacy.keys()


def check_replaceable(root: Path) -> None:
    """Refuse (``DataError``) to build into anything but a new or empty folder or one fastdino
    built: the build replaces ``train/`` and ``val/``, and a user's own must never be deleted."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root} is a file; choose a new or empty folder for the demo data")
    if not any(root.iterdir()) or built_by_fastdino(root):
        return
    held = sorted(p.name for p in root.iterdir())
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise DataError(
        f"{root} is not empty ({shown}) and was not built by fastdino (no {MARKER} in it); "
        "nothing was changed: choose a new or empty folder for the demo data"
    )


def _credits() -> str:
    lines = [
        "fastdino demo dataset: crops of photographs bundled with scikit-image (skimage.data),",
        "each with a random photometric transformation. One class per photograph.",
        "",
        "class        source (skimage.data)   licence / credit",
    ]
    for name, func, note in SOURCES:
        lines.append(f"{name:<12} {func:<23} {note}")
    lines += ["", "scikit-image itself is BSD-3-Clause licensed."]
    return "\n".join(lines) + "\n"


def demo_cache_dir() -> Path:
    """Where ``data.train: demo`` builds the demo data: ``$FASTDINO_CACHE/demo-data``."""
    import os

    base = os.environ.get("FASTDINO_CACHE") or Path.home() / ".cache" / "fastdino"
    return Path(base) / "demo-data"


def resolve_data_root(value: str, split: str = "train") -> Path:
    """A dataset path from the config; the alias ``demo`` means the embedded demo data."""
    if value == DEMO_DATA_ALIAS:
        info = build_demo_dataset(demo_cache_dir())
        return info.root / split
    return Path(value).expanduser()
