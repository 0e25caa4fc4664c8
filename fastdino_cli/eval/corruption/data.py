"""Image sets for the corruption evaluation: released ImageNet-C folders, or clean folders
corrupted on the fly in data-loader workers.

Released layout (Zenodo record 2235448): ``ROOT/<corruption>/<severity>/<class>/*.JPEG``.
FastDINOv2's mini-ImageNet-C variant inserts a ``val/`` level and a ``labels.txt``:
``ROOT/<corruption>/<severity>/{labels.txt, val/<class>/*}``. Both are read by
:func:`find_imagenet_c`, each split as a labelled folder of ``data/labelled.py`` (the reader of
every evaluation). On-the-fly corruption follows the original pipeline: the classifier's
eval transform (resize + centre crop) first, then the corruption on the uint8 crop, then a JPEG
quality-85 round trip (``optimize=True``, as the original saved the released files; ``jpeg=False``
skips it), so the model sees what the released files would hold. With ``write_root`` those
JPEG bytes are also stored in the released layout, to be reused with ``--imagenet-c``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastdino_cli.data.images import read_rgb_or_fail
from fastdino_cli.data.labelled import LabelledFolder, read_labels_txt, scan_labelled_folder
from fastdino_cli.errors import DataError
from fastdino_cli.eval.corruption.registry import corrupt, corruption_rng
from fastdino_cli.fileio import atomic_write

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


def _samples(folder: LabelledFolder, max_per_class: int | None) -> list[Sample]:
    return [Sample(p, c) for p, c in folder.first_per_class(max_per_class).samples()]


def list_labelled_images(
    root: str | Path, max_per_class: int | None = None, *, what: str = "labelled"
) -> list[Sample]:
    """The images of a labelled folder (``data.labelled.scan_labelled_folder``: any depth,
    FastDINOv2's ``labels.txt + val/`` unwrapped), at most ``max_per_class`` of each class."""
    return _samples(scan_labelled_folder(root, what=what, min_classes=1), max_per_class)


def find_imagenet_c(
    root: str | Path,
    corruptions: list[str],
    severities: list[int],
    max_per_class: int | None = None,
) -> tuple[dict[Task, list[Sample]], dict[str, str]]:
    """Samples per (corruption, severity) in a released (or FastDINOv2-style) ImageNet-C root.

    Each ``ROOT/<corruption>/<severity>`` is one labelled folder, read like any other
    (``scan_labelled_folder``). Returns the samples per task and the ``labels.txt`` mapping
    (empty without one).
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
            split = scan_labelled_folder(folder, what="ImageNet-C split", min_classes=1)
            if split.labels_txt is not None:
                labels.update(read_labels_txt(split.labels_txt))
            sets[Task(name, severity)] = _samples(split, max_per_class)
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


def resolve_transform(model, mode: str) -> PilTransform:
    """PIL -> HxWx3 uint8 crop for ``model``: its own eval transform, or a centre crop."""
    size = int(getattr(model, "image_size", 224))
    if mode == "crop":
        return _CenterCrop(size)
    if hasattr(model, "preprocess"):
        return _ModelPreprocess(model.preprocess)
    raise DataError(
        f"model {type(model).__name__} has no preprocess(); it cannot crop clean images itself"
    )


@dataclass(frozen=True)
class _CenterCrop:
    size: int

    def __call__(self, img) -> np.ndarray:
        return center_crop_pil(img, self.size)


@dataclass(frozen=True)
class _ModelPreprocess:
    preprocess: Callable

    def __call__(self, img) -> np.ndarray:
        return tensor_to_uint8(self.preprocess(img))


def tensor_to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> HxWx3 uint8 (exact for tensors made from uint8 images)."""
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def uint8_to_tensor(x: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(x, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class FileSet(torch.utils.data.Dataset):
    """Stored images of several tasks; items ``(x01, label, task)``.

    Every task goes through ``transform`` except those named in ``per_task`` (task index ->
    transform): the clean set is read with the model's own eval transform while the 224 px
    corrupted images are centre-cropped.
    """

    def __init__(
        self,
        items: list[tuple[Path, int, int]],
        transform: PilTransform,
        per_task: dict[int, PilTransform] | None = None,
    ) -> None:
        self.items = items
        self.transform = transform
        self.per_task = dict(per_task or {})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, label, task = self.items[i]
        x = self.per_task.get(task, self.transform)(read_rgb_or_fail(path))
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
        jpeg: bool = True,
    ) -> None:
        self.samples, self.labels, self.tasks = samples, labels, tasks
        self.transform, self.seed, self.write_root = transform, seed, write_root
        self.jpeg = jpeg

    def __len__(self) -> int:
        return len(self.samples) * len(self.tasks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        index, task_index = divmod(k, len(self.tasks))
        sample, task = self.samples[index], self.tasks[task_index]
        x = self.transform(read_rgb_or_fail(sample.path))
        if task.corruption != CLEAN:
            rng = corruption_rng(self.seed, task.corruption, task.severity, index)
            x = corrupt(x, task.corruption, task.severity, rng)
            encoded = encode_released(x) if self.jpeg or self.write_root is not None else b""
            if self.write_root is not None:
                write_released(self.write_root, task, sample, encoded)
            if self.jpeg:  # what the model sees is what the released files hold
                x = decode_released(encoded)
        return uint8_to_tensor(x), self.labels[index], task_index


JPEG_QUALITY = 85
"""Quality of the released ImageNet-C files (hendrycks' generation code saves with 85)."""


def encode_released(x: np.ndarray) -> bytes:
    """A corrupted HxWx3 uint8 crop encoded as the released files are: JPEG quality 85
    (``optimize=True``, as the original; it only changes the Huffman tables)."""
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def decode_released(data: bytes) -> np.ndarray:
    """The RGB pixels of :func:`encode_released`'s bytes (what reading the file back gives)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def write_released(root: Path, task: Task, sample: Sample, data: bytes) -> Path:
    """Store one encoded crop as ``root/<corruption>/<severity>/<class>/<stem>.JPEG``."""
    folder = root / task.corruption / str(task.severity) / sample.class_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample.path.stem}.JPEG"
    return atomic_write(  # not durable: a generated set that can be written again
        path, lambda f: f.write(data), durable=False
    )


def worker_init(_: int) -> None:
    """One torch thread per loader worker: the workers are the parallelism.

    OpenCV's thread pool is deliberately not touched here: calling ``cv2.setNumThreads`` in a
    forked child whose parent already ran a parallel OpenCV call deadlocks.
    """
    torch.set_num_threads(1)
