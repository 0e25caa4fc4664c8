"""Image sets for the corruption evaluation: released ImageNet-C folders, or clean folders
corrupted on the fly in data-loader workers.

Released layout (Zenodo record 2235448): ``ROOT/<corruption>/<severity>/<class>/*.JPEG``.
FastDINOv2's mini-ImageNet-C variant inserts a ``val/`` level and a ``labels.txt``:
``ROOT/<corruption>/<severity>/{labels.txt, val/<class>/*}``. Both are read by
:func:`find_imagenet_c`. On-the-fly corruption follows the original pipeline: the classifier's
eval transform (resize + centre crop) first, then the corruption on the uint8 crop; with
``write_root`` each corrupted crop is also stored as JPEG quality 85 (``optimize=True``, as the
original) in the released layout, so the set can be reused with ``--imagenet-c``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastdino_cli.data.images import read_rgb_or_fail, walk_labelled
from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.registry import corrupt, corruption_rng
from fastdino_cli.fileio import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
CLEAN = "clean"

PilTransform = Callable[[Image.Image], np.ndarray]  # PIL image -> HxWx3 uint8 crop


@dataclass(frozen=True)
class Sample:
    """One image file and its class name (the folder it sits in)."""

    path: Path
    class_name: str


@dataclass(frozen=True)
class Task:
    """One (corruption, severity) cell; ``CLEAN`` with severity 0 is the clean set."""

    corruption: str
    severity: int


def list_labelled_images(root: str | Path, max_per_class: int | None = None) -> list[Sample]:
    """``root/<class>/<image>`` files (one level, as the released sets), sorted by class then
    name; a ``val/`` folder beside the classes (FastDINOv2's layout) is not a class."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; give a labelled folder root/<class>/<image>")
    samples: list[Sample] = []
    per_class = walk_labelled(root, extensions=IMAGE_EXTENSIONS, recursive=False, exclude=("val",))
    for name, files in per_class.items():
        samples += [Sample(f, name) for f in files[:max_per_class]]
    if not samples:
        raise DataError(f"{root} holds no images in class sub-folders root/<class>/<image>")
    return samples


def read_labels_txt(path: Path) -> dict[str, str]:
    """FastDINOv2/DINOv2 ``labels.txt``: one ``<wnid>,<readable name>`` per line."""
    mapping: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, _, name = line.partition(",")
            mapping[key.strip()] = name.strip() or key.strip()
    return mapping


def find_imagenet_c(
    root: str | Path,
    corruptions: list[str],
    severities: list[int],
    max_per_class: int | None = None,
) -> tuple[dict[Task, list[Sample]], dict[str, str]]:
    """Samples per (corruption, severity) in a released (or FastDINOv2-style) ImageNet-C root.

    Returns the samples per task and the ``labels.txt`` mapping (empty without one).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--imagenet-c {root} is not a folder; give the root holding <corruption>/")
    sets: dict[Task, list[Sample]] = {}
    labels: dict[str, str] = {}
    for name in corruptions:
        if not (root / name).is_dir():
            raise DataError(
                f"{root / name} is missing; this ImageNet-C root has no {name!r} corruption "
                "(select the ones it has with --corruptions)"
            )
        for severity in severities:
            folder = root / name / str(severity)
            if not folder.is_dir():
                raise DataError(
                    f"{folder} is missing: severity {severity} of {name!r} is not in this "
                    "ImageNet-C root (select the ones it has with --severities)"
                )
            if (folder / "labels.txt").is_file():
                labels.update(read_labels_txt(folder / "labels.txt"))
            images = folder / "val" if (folder / "val").is_dir() else folder
            sets[Task(name, severity)] = list_labelled_images(images, max_per_class)
    return sets, labels


def center_crop_pil(img: Image.Image, size: int) -> np.ndarray:
    """Centre crop to ``size`` (no resize unless the image is smaller: then shorter side = size).

    The released ImageNet-C images are already 224 x 224; hendrycks' ``test.py`` only centre
    crops them, so this is the default transform for ``--imagenet-c``.
    """
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) < size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def tensor_to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> HxWx3 uint8 (exact for tensors made from uint8 images)."""
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def uint8_to_tensor(x: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(x, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class FileSet(torch.utils.data.Dataset):
    """Stored images of several tasks, through one transform; items ``(x01, label, task)``."""

    def __init__(
        self,
        items: list[tuple[Path, int, int]],
        transform: PilTransform,
    ) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, label, task = self.items[i]
        x = self.transform(read_rgb_or_fail(path))
        return uint8_to_tensor(x), label, task


class CorruptedSet(torch.utils.data.Dataset):
    """Clean images corrupted on the fly: item ``k`` is (image ``k // T``, task ``k % T``).

    Each image is decoded and cropped once per task; the corruption's generator depends only
    on (seed, corruption, severity, image index), so results do not depend on the number of
    workers or the batch size.
    """

    def __init__(
        self,
        samples: list[Sample],
        labels: list[int],
        tasks: list[Task],
        transform: PilTransform,
        seed: int,
        write_root: Path | None = None,
    ) -> None:
        self.samples, self.labels, self.tasks = samples, labels, tasks
        self.transform, self.seed, self.write_root = transform, seed, write_root

    def __len__(self) -> int:
        return len(self.samples) * len(self.tasks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        index, task_index = divmod(k, len(self.tasks))
        sample, task = self.samples[index], self.tasks[task_index]
        x = self.transform(read_rgb_or_fail(sample.path))
        if task.corruption != CLEAN:
            rng = corruption_rng(self.seed, task.corruption, task.severity, index)
            x = corrupt(x, task.corruption, task.severity, rng)
            if self.write_root is not None:
                write_released(self.write_root, task, sample, x)
        return uint8_to_tensor(x), self.labels[index], task_index


def write_released(root: Path, task: Task, sample: Sample, x: np.ndarray) -> Path:
    """Store one corrupted crop as ``root/<corruption>/<severity>/<class>/<stem>.JPEG`` (q85)."""
    folder = root / task.corruption / str(task.severity) / sample.class_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample.path.stem}.JPEG"
    image = Image.fromarray(x)
    return atomic_write(  # not durable: a generated set that can be written again
        path, lambda f: image.save(f, format="JPEG", quality=85, optimize=True), durable=False
    )


def worker_init(_: int) -> None:
    """One torch thread per loader worker: the workers are the parallelism.

    OpenCV's thread pool is deliberately not touched here: calling ``cv2.setNumThreads`` in a
    forked child whose parent already ran a parallel OpenCV call deadlocks.
    """
    torch.set_num_threads(1)
