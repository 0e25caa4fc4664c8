"""Image folders and the bad-file policy.

- Unlabelled: any folder tree of images (pretraining needs no labels).
- Labelled: the ImageFolder layout ``ROOT/<class>/<image>`` (probes and evaluations).

Files are found by extension, by the one walk ``walk_image_files`` that every reader uses (each
real directory is visited once: symlink cycles are not followed). Decoding happens lazily in
``load_rgb``; an unreadable, truncated or non-image file raises ``UnreadableImage`` there so
callers can skip it, count it and report it at the end instead of dying halfway through a run.
Grayscale, palette, CMYK, 16-bit and float images are converted to 8-bit RGB; very large images
are decoded (the decompression-bomb guard is lifted for our own reads) and, for JPEGs, decoded
at reduced scale when ``draft_size`` allows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image

from fastdino_cli.data.demo import resolve_data_root
from fastdino_cli.errors import DataError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)


MAX_PIXELS = 1 << 30
"""PIL's decompression-bomb guard for our reads: PIL refuses images above twice this (2.1
gigapixels, ~6 GB as RGB) as unreadable instead of running out of memory; anything a camera,
scanner or panorama produces decodes, silently (PIL's default warns at 89 megapixels)."""


class UnreadableImage(Exception):
    """A file that could not be decoded as an image."""


def is_image_file(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def resolve_root(value: str | Path, split: str = "train") -> Path:
    """A dataset folder (or ``.txt`` image list) from the config (``demo`` = the embedded demo
    data), checked to exist."""
    root = resolve_data_root(str(value), split)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; set data.train=DIR to an image folder")
    if root.is_file() and is_image_list(root):
        return root
    if not root.is_dir():
        raise DataError(
            f"data path {root} is not a folder; point it at a folder of images or a .txt list"
        )
    return root


def walk_error(e: OSError) -> NoReturn:
    """A folder that cannot be listed: a dataset with holes must not pass silently."""
    raise DataError(
        f"cannot list the folder {e.filename}: {e.strerror or e}; fix its permissions or "
        "remove it from the dataset"
    )


LIST_SUFFIX = ".txt"
"""A file with this suffix in place of a folder is a list of images (``fastdino curate`` writes
one): one path per line, relative paths resolved against the list's folder, blank lines and lines
starting with ``#`` skipped, order kept."""


def is_image_list(path: str | Path) -> bool:
    return str(path).lower().endswith(LIST_SUFFIX)


def read_image_list(path: str | Path) -> list[Path]:
    """The images a ``.txt`` list names; a missing file is a ``DataError`` naming the first few."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the image list {path}: {e}") from None
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            p = Path(entry).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise DataError(f"the image list {path} names no images (one path per line)")
    missing = [p for p in out if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(
            f"{len(missing)} of the {len(out)} files listed in {path} do not exist ({shown}); "
            "fix or regenerate the list"
        )
    return out


DirId = tuple[int, int]
"""A real directory: ``(st_dev, st_ino)``, the same whatever path or symlink leads to it."""


def dir_id(path: str | Path) -> DirId:
    st = os.stat(path)  # follows symlinks: the directory a link leads to
    return (st.st_dev, st.st_ino)


def walk_image_files(
    top: str | Path,
    *,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    recursive: bool = True,
    seen: set[DirId] | None = None,
) -> list[Path]:
    """THE image-folder walk: every image file under ``top``, sorted; used by every reader.

    Symlinked files and folders are followed, but each real directory is visited once: a link
    back to a parent (a cycle) or to a folder already visited is skipped. ``os.walk`` with
    ``followlinks=True`` instead follows a cycle until the path is too long, counting the same
    images dozens of times (and, in a labelled folder, under other classes' labels).

    Args:
        top: the folder to walk (always walked, even when ``seen`` holds it).
        extensions: lower-case file suffixes that count as images.
        recursive: False lists ``top`` only.
        seen: directories not to enter, updated with those visited; pass one set to several
            walks so that together they visit each real directory once.

    Hidden files and folders (``.name``) are skipped. A folder that cannot be listed is a
    ``DataError`` naming it.
    """
    top = Path(top)
    seen = set() if seen is None else seen
    try:
        seen.add(dir_id(top))
    except OSError as e:
        walk_error(e)
    out: list[Path] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            walk_error(e)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if not is_dir:
                if entry.name.lower().endswith(extensions):
                    out.append(folder / entry.name)
                continue
            if not recursive:
                continue
            try:
                key = dir_id(entry.path)
            except OSError:
                continue  # a link that loops on itself or leads nowhere
            if key not in seen:
                seen.add(key)
                stack.append(folder / entry.name)
    out.sort()
    return out


def class_folders(root: str | Path) -> list[str]:
    """The class names of a labelled folder: its non-hidden sub-folders, sorted."""
    root = Path(root)
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as e:
        walk_error(e)


def walk_labelled(
    root: str | Path,
    *,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    recursive: bool = True,
    exclude: tuple[str, ...] = (),
) -> dict[str, list[Path]]:
    """``ROOT/<class>/**/<image>`` -> {class: sorted images}, classes sorted (empty ones kept).

    One ``seen`` set spans the whole folder and starts with the root and every class folder, so
    a link from one class into another or up to the root is not followed: each image gets one
    label, the one of the class folder it really sits in.
    """
    root = Path(root)
    names = [n for n in class_folders(root) if n not in exclude]
    seen: set[DirId] = set()
    for folder in (root, *(root / n for n in names)):
        try:
            seen.add(dir_id(folder))
        except OSError as e:
            walk_error(e)
    return {
        n: walk_image_files(root / n, extensions=extensions, recursive=recursive, seen=seen)
        for n in names
    }


def scan_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (any depth, hidden folders skipped), sorted; for a ``.txt``
    list, the files it names in its order (``read_image_list``)."""
    root = Path(root)
    if root.is_file() and is_image_list(root):
        return read_image_list(root)
    out = walk_image_files(root)
    if not out:
        raise DataError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under {root}"
        )
    return out


@dataclass
class LabelledImages:
    """An ImageFolder-layout dataset listing."""

    root: Path
    files: list[Path]
    labels: list[int]
    class_names: list[str]


def scan_labelled(root: str | Path) -> LabelledImages:
    """``ROOT/<class>/**/<image>``: classes are the sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"labelled data folder {root} does not exist or is not a folder")
    per_class = walk_labelled(root)
    if not per_class:
        raise DataError(
            f"{root} has no class sub-folders; expected the layout {root}/<class>/<img>"
        )
    files, labels = [], []
    for ci, found in enumerate(per_class.values()):
        files += found
        labels += [ci] * len(found)
    if not files:
        raise DataError(f"no image files found in the class folders of {root}")
    return LabelledImages(root, files, labels, list(per_class))


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (16-bit and float images are rescaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if img.mode == "F" and arr.max() <= 1.0:
            hi = 1.0
        arr8 = (np.clip(arr / hi, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image or raise ``UnreadableImage``.

    ``draft_size``: for JPEGs, let the decoder downscale by a power of two as long as both
    sides stay at least this large (Pillow ``draft``).
    """
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{path}: {e}") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_rgb_or_fail(path: str | Path) -> Image.Image:
    """``load_rgb`` for the evaluations, where a bad file is not skipped but reported: a one-line
    ``DataError`` naming it. Same conversions (CMYK, grayscale, 16-bit, huge) as pretraining."""
    try:
        return load_rgb(path)
    except UnreadableImage as e:
        cause = e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:160]
        raise DataError(f"cannot read image {path}: {reason}; remove or replace the file") from None


def first_readable(files: list[Path], limit: int | None = None) -> int:
    """Index of the first file that decodes; ``DataError`` when none of them does."""
    for i, f in enumerate(files[: limit or len(files)]):
        try:
            load_rgb(f)
            return i
        except UnreadableImage:
            continue
    shown = files[0].parent if files else "?"
    raise DataError(
        f"none of the {len(files)} image files under {shown} could be read; "
        "check that the folder holds valid images"
    )
