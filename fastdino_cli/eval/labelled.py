"""Labelled image folders for the evaluations (ImageFolder layout and its ImageNet variants).

Accepted layouts, all read the same way (one sub-folder per class, images anywhere below it,
classes sorted by name so indices equal torchvision ``ImageFolder``'s and, on ImageNet, the
standard 1000-class indices)::

    train/<wnid>/*.JPEG                              ImageNet train / val
    imagenet-c/<corruption>/<1-5>/<wnid>/*.JPEG      one ImageNet-C split = one folder
    <corruption>/<level>/{labels.txt, val/<wnid>/}   FastDINOv2's mini-ImageNet-C: val/ is used

Every problem with the folder is a one-line ``DataError`` naming the path: missing, empty, a
single class, or classes that differ between train and val. The pretraining reader
(``data/folders.py``) is separate on purpose: evaluations need labels and a stable order, not
bad-file policies for streaming.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fastdino_cli.data.images import read_rgb_or_fail, walk_labelled
from fastdino_cli.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class LabelledFolder:
    """The images of a labelled folder, in a fixed order, with integer labels."""

    root: Path
    class_names: list[str]
    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Hash of the file list with sizes and modification times: changes when data does."""
        h = hashlib.sha256()
        h.update("\n".join(self.class_names).encode())
        for path, label in zip(self.paths, self.labels, strict=True):
            st = path.stat()
            rel = os.path.relpath(path, self.root)
            h.update(f"\n{rel}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def load_rgb(self, index: int) -> Image.Image:
        """Decode one image as RGB; an unreadable file is a ``DataError`` naming it."""
        return read_rgb_or_fail(self.paths[index])  # CMYK, 16-bit, huge: as in pretraining


def resolve_layout(root: Path) -> Path:
    """The folder holding the class sub-folders (FastDINOv2's ``val/`` variant unwrapped)."""
    if (root / "labels.txt").is_file() and (root / "val").is_dir():
        return root / "val"
    return root


def scan_labelled_folder(root: str | Path, *, what: str = "data") -> LabelledFolder:
    """Read ``root/<class>/**/<image>`` into a ``LabelledFolder`` (sorted, deterministic)."""
    given = Path(root)
    if not given.exists():
        raise DataError(f"{what} folder {given} does not exist")
    if not given.is_dir():
        raise DataError(f"{what} folder {given} is not a folder; pass a folder of class folders")
    base = resolve_layout(given)
    per_class = walk_labelled(base, extensions=IMAGE_EXTENSIONS)
    classes = list(per_class)
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for idx, (name, found) in enumerate(per_class.items()):
        if not found:
            empty.append(name)
        paths.extend(found)
        labels.extend([idx] * len(found))
    if not paths:
        loose = [p for p in base.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = " (images lie directly in it; put them in one sub-folder per class)" if loose else ""
        raise DataError(f"{what} folder {given} holds no images in class sub-folders{hint}")
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"{what} folder {given} has class folders without images ({shown}); "
            "remove them or add images"
        )
    if len(classes) < 2:
        raise DataError(
            f"{what} folder {given} has a single class ({classes[0]!r}); "
            "a probe needs at least two class sub-folders"
        )
    return LabelledFolder(root=base, class_names=classes, paths=paths, labels=labels)


def check_same_classes(train: LabelledFolder, val: LabelledFolder) -> None:
    """Train and val must name the same classes (label indices are positions in that list)."""
    if train.class_names == val.class_names:
        return
    only_train = sorted(set(train.class_names) - set(val.class_names))
    only_val = sorted(set(val.class_names) - set(train.class_names))
    parts = []
    if only_val:
        parts.append(
            f"only in val: {', '.join(only_val[:5])}{', ...' if len(only_val) > 5 else ''}"
        )
    if only_train:
        parts.append(
            f"only in train: {', '.join(only_train[:5])}{', ...' if len(only_train) > 5 else ''}"
        )
    raise DataError(
        f"classes differ between train {train.root} ({len(train.class_names)}) and val "
        f"{val.root} ({len(val.class_names)}): {'; '.join(parts)}; use folders with the same "
        "class sub-folders"
    )
