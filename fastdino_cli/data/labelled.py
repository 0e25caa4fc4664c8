"""Labelled image folders: the one reader of (image, class) for every evaluation.

``scan_labelled_folder`` is what ``probe`` (``--train``, ``--val``), ``corrupt-eval`` (``--val``,
``--clean`` and every ImageNet-C split), ``fourier-heatmap --data`` and ``gradcam --data``
(and its class prototypes) read. Accepted layouts, all read the same way (one sub-folder per
class, images at any depth below it, classes sorted by name so indices equal torchvision
``ImageFolder``'s and, on ImageNet, the standard 1000-class indices)::

    train/<wnid>/*.JPEG                              ImageNet train / val
    imagenet-c/<corruption>/<1-5>/<wnid>/*.JPEG      one ImageNet-C split = one folder
    <corruption>/<level>/{labels.txt, val/<wnid>/}   FastDINOv2's mini-ImageNet-C: val/ is used

The last one is recognised by ``resolve_layout`` (a ``labels.txt`` file beside a ``val/``
folder), never by the name alone: without ``labels.txt``, a folder called ``val`` is a class
like any other. Which files are images, hidden files, symlinks and cycles: the rules of
``images.walk_image_trees`` (an image reached through a link into another class folder keeps
the label of the folder it really sits in).

Every problem with the folder is a one-line ``DataError`` naming the path: missing, not a
folder, no images in class folders, an empty class folder, or fewer classes than the caller
needs; ``check_same_classes`` compares train and val. A separate module from ``images.py``
(files and pixels) because together they would pass ~400 lines, and the layouts change with the
evaluations, not with decoding.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from fastdino_cli.data.images import is_image_file, read_rgb_or_fail, walk_error, walk_image_trees
from fastdino_cli.errors import DataError

LABELS_TXT = "labels.txt"
"""FastDINOv2's (and DINOv2's ImageNet) class list: one ``<wnid>,<readable name>`` per line."""


@dataclass
class LabelledFolder:
    """The images of a labelled folder, in a fixed order (class, then path), with labels."""

    root: Path
    """The folder holding the class sub-folders (``val/`` in FastDINOv2's layout)."""
    class_names: list[str]
    paths: list[Path]
    labels: list[int]
    labels_txt: Path | None = None
    """The ``labels.txt`` of the folder given (FastDINOv2's, beside ``val/``), if it has one."""

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

    def samples(self) -> list[tuple[Path, str]]:
        """``(file, class name)`` pairs in order: what every evaluation reads from the folder."""
        return [(p, self.class_names[c]) for p, c in zip(self.paths, self.labels, strict=True)]

    def by_class(self) -> dict[str, list[Path]]:
        """``{class: its files}`` in class order."""
        out: dict[str, list[Path]] = {name: [] for name in self.class_names}
        for path, name in self.samples():
            out[name].append(path)
        return out

    def first_per_class(self, n: int | None) -> LabelledFolder:
        """The first ``n`` files (in path order) of every class; all of them for ``None``."""
        if n is None:
            return self
        taken = [0] * len(self.class_names)
        keep = []
        for i, c in enumerate(self.labels):
            if taken[c] < n:
                taken[c] += 1
                keep.append(i)
        return replace(
            self, paths=[self.paths[i] for i in keep], labels=[self.labels[i] for i in keep]
        )


def resolve_layout(root: Path) -> Path:
    """The folder holding the class sub-folders: ``root/val`` in FastDINOv2's layout
    (``root/labels.txt`` beside ``root/val/``), else ``root`` itself."""
    if (root / LABELS_TXT).is_file() and (root / "val").is_dir():
        return root / "val"
    return root


def class_folders(root: str | Path) -> list[str]:
    """The class names of a labelled folder: its non-hidden sub-folders, sorted."""
    root = Path(root)
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        walk_error(e)


def walk_labelled(root: str | Path) -> dict[str, list[Path]]:
    """``ROOT/<class>/**/<image>`` -> {class: sorted images}, classes sorted (empty ones kept).

    One walk over all class folders (``walk_image_trees``), so a link from one class into
    another, or up to the root, adds nothing: each image gets one label, the one of the class
    folder it really sits in.
    """
    root = Path(root)
    names = class_folders(root)
    found = walk_image_trees([root / n for n in names], fenced=[root])
    return dict(zip(names, found, strict=True))


def scan_labelled_folder(
    root: str | Path, *, what: str = "data", min_classes: int = 2
) -> LabelledFolder:
    """Read ``root/<class>/**/<image>`` into a ``LabelledFolder`` (sorted, deterministic).

    ``what`` names the folder in errors (``"--val"``); ``min_classes``: 2 for a probe, 1 where
    a single class makes sense (corrupt-eval, gradcam).
    """
    given = Path(root)
    if not given.exists():
        raise DataError(f"{what} folder {given} does not exist")
    if not given.is_dir():
        raise DataError(f"{what} folder {given} is not a folder; pass a folder of class folders")
    base = resolve_layout(given)
    per_class = walk_labelled(base)
    classes = list(per_class)
    paths: list[Path] = []
    labels: list[int] = []
    for idx, found in enumerate(per_class.values()):
        paths.extend(found)
        labels.extend([idx] * len(found))
    if not paths:
        loose = [p for p in base.iterdir() if p.is_file() and is_image_file(p)]
        hint = " (images lie directly in it; put them in one sub-folder per class)" if loose else ""
        raise DataError(f"{what} folder {given} holds no images in class sub-folders{hint}")
    empty = [name for name, found in per_class.items() if not found]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"{what} folder {given} has class folders without images ({shown}); "
            "remove them or add images"
        )
    if len(classes) < min_classes:
        raise DataError(
            f"{what} folder {given} has a single class ({classes[0]!r}); "
            f"this needs at least {min_classes} class sub-folders"
        )
    listing = given / LABELS_TXT
    labels_txt = listing if listing.is_file() else None
    return LabelledFolder(base, classes, paths, labels, labels_txt)


def read_labels_txt(path: Path) -> dict[str, str]:
    """FastDINOv2/DINOv2 ``labels.txt``: one ``<wnid>,<readable name>`` per line."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    mapping: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            key, _, name = line.partition(",")
            mapping[key.strip()] = name.strip() or key.strip()
    return mapping


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
