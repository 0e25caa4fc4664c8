"""THE image reader: which files are images, how folders are walked, how a file is decoded.

Pretraining and every evaluation (probe, corrupt-eval, fourier-heatmap, gradcam) find and decode
images here, so one folder gives every subcommand the same files and the same pixels:

- **Which files**: ``IMAGE_EXTENSIONS``, matched case-insensitively (``.JPEG`` counts). Hidden
  files and folders (``.name``) are skipped.
- **Which folders**: every depth below the root. Symlinked files and folders are followed; each
  real directory is listed once, by the path that does not go through a link when there is one
  (``walk_image_trees``): a symlink loop, or a link to a folder already in the tree, adds nothing.
- **Decoding** (``load_rgb``): any PIL mode to 8-bit RGB; JPEGs at reduced scale when a
  ``jpeg_scale.DecodeSpec`` allows it (training's low-resolution stages); one pixel limit,
  ``MAX_PIXELS``, checked on the header before anything is allocated.
- **Bad files**: ``load_rgb`` raises ``UnreadableImage``. Pretraining skips and counts it (the
  dataset moves to the next file; the loop reports the total); evaluations call
  ``read_rgb_or_fail``, a one-line ``DataError`` naming the file, since a probe or an accuracy
  over a silently shrunken set would be wrong.

Labelled folders (class sub-folders, FastDINOv2's ``labels.txt + val/`` variant, ImageNet-C
splits) are in the sibling ``data/labelled.py``, built on ``walk_image_trees``: one module would
pass the ~400 lines a module should hold, and the labelled layouts change for other reasons
(label order, layout variants) than decoding does.
"""

from __future__ import annotations

import heapq
import os
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import numpy as np
from PIL import Image

from fastdino_cli.data.demo import resolve_data_root
from fastdino_cli.data.jpeg_scale import DecodeSpec, draft_request, reduction
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
"""Lower-case suffixes of image files: torchvision ``ImageFolder``'s list plus ``.gif`` and
``.pbm``, which Pillow decodes as well (a GIF gives its first frame)."""

MAX_PIXELS = 1 << 31
"""The one decompression-bomb limit of every read: an image whose header claims more pixels
(2.1 gigapixels, 6.4 GB as RGB) is unreadable instead of exhausting memory. PIL's own guard
(warning at 89 megapixels, refusing at 179) is lifted for our reads, so anything a camera,
scanner or panorama produces decodes, silently."""


class UnreadableImage(Exception):
    """A file that could not be decoded as an image: ``path`` and a one-line ``reason``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


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


def walk_image_trees(
    tops: Sequence[str | Path], *, fenced: Sequence[str | Path] = ()
) -> list[list[Path]]:
    """THE walk: the image files under each of ``tops`` (sorted), each real directory once.

    The tops (e.g. the class folders of a labelled dataset) are always walked. Below them,
    plain folders are listed first, all tops together; folders reached through a symlink come
    after, in path order, and only if their real directory was not listed yet. So a link into
    the tree (to a parent: a cycle; to another class folder or one of its sub-folders) adds
    nothing, and a file is found by its real path and, in a labelled folder, under the class it
    really sits in, whatever order the file system lists entries in. Links leading outside the
    tree are followed. ``os.walk(followlinks=True)`` instead follows a cycle until the path is
    too long, counting the same images dozens of times (under other classes' labels).

    ``fenced``: folders never entered below the tops (a labelled folder's root, so that a link
    from a class folder up to it does not give the root's loose files a label). Symlinked files
    are kept (a file linked from two places is listed twice). A folder that cannot be listed is
    a ``DataError`` naming it.
    """
    roots = [Path(t) for t in tops]
    seen: set[DirId] = set()
    for top in (*roots, *map(Path, fenced)):
        try:
            seen.add(dir_id(top))
        except OSError as e:
            walk_error(e)
    found: list[list[Path]] = [[] for _ in roots]
    stack = [(i, top) for i, top in reversed(list(enumerate(roots)))]
    links: list[tuple[str, int, Path]] = []  # heap of folders behind symlinks, by path
    while stack or links:
        if not stack:
            _, owner, link = heapq.heappop(links)
            try:
                key = dir_id(link)
            except OSError:
                continue  # a link that loops on itself or leads nowhere
            if key not in seen:
                seen.add(key)
                stack.append((owner, link))
            continue
        owner, folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            walk_error(e)
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            try:
                is_dir, is_link = entry.is_dir(), entry.is_symlink()  # is_dir follows links
            except OSError:
                is_dir, is_link = False, False
            if not is_dir:
                if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    found[owner].append(path)
            elif is_link:
                heapq.heappush(links, (str(path), owner, path))
            else:
                try:
                    key = dir_id(path)
                except OSError:
                    continue
                if key not in seen:
                    seen.add(key)
                    subfolders.append(path)
        stack.extend((owner, sub) for sub in reversed(subfolders))
    for files in found:
        files.sort()
    return found


def walk_image_files(top: str | Path) -> list[Path]:
    """Every image file under ``top``, any depth, sorted (``walk_image_trees`` for one top)."""
    return walk_image_trees([top])[0]


def scan_images(source: str | Path) -> list[Path]:
    """The unlabelled images of ``source`` (pretraining's ``data.train``, gradcam's ``--images``).

    A folder: every image file below it (``walk_image_files``). A ``.txt`` file: the images it
    lists, in its order (``read_image_list``; ``fastdino curate`` writes one). No image at all is
    a ``DataError``.
    """
    source = Path(source)
    if source.is_dir():
        files = walk_image_files(source)
    elif source.is_file() and is_image_list(source):
        return read_image_list(source)
    elif source.exists():
        raise DataError(
            f"data path {source} is neither a folder of images nor a {LIST_SUFFIX} list of "
            "image paths; point it at one of those"
        )
    else:
        raise DataError(f"data folder {source} does not exist")
    if not files:
        raise DataError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under {source}"
        )
    return files


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------

_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _pil_guard_lifted() -> Iterator[None]:
    """PIL's global decompression-bomb guard off while we read (``MAX_PIXELS`` replaces it).

    PIL checks the module global ``Image.MAX_IMAGE_PIXELS`` when it opens a file (and per GIF
    frame); reference-counted so that threads reading at once restore the user's value last.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


_DECODE_ERRORS = (
    OSError,  # also PIL.UnidentifiedImageError
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    MemoryError,
    Image.DecompressionBombError,
)
"""What Pillow raises on truncated, corrupt or non-image files (and on allocation failure)."""


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


def load_rgb(path: str | Path, jpeg_scale: DecodeSpec | None = None) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image or raise ``UnreadableImage``: THE decoder.

    ``jpeg_scale``: what the crops made from this image need (pretraining passes its stage's
    ``DecodeSpec``); a JPEG is then decoded at 1/2, 1/4 or 1/8 scale as far as
    ``jpeg_scale.reduction`` allows. Other formats, and ``None``, decode at full size. An image
    whose header claims more than ``MAX_PIXELS`` pixels is refused before it is decoded.
    """
    try:
        with _pil_guard_lifted(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise UnreadableImage(
                        path,
                        f"its header claims {w}x{h} = {w * h:,} pixels, over the limit of "
                        f"{MAX_PIXELS:,} (a decompression bomb or an image too large to decode)",
                    )
                if jpeg_scale is not None and img.format == "JPEG":
                    f = reduction(h, w, jpeg_scale)
                    if f > 1:
                        img.draft("RGB", draft_request(h, w, f))
                img.load()
                return _to_rgb(img)
    except _DECODE_ERRORS as e:
        raise UnreadableImage(path, _reason(e, path)) from e


def _reason(e: BaseException, path: str | Path) -> str:
    """One short line saying why ``path`` did not decode (without repeating the path)."""
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror  # e.g. "No such file or directory", "Permission denied"
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return lines[0].replace(f" {str(path)!r}", "").replace(str(path), "the file")[:160]


def read_rgb_or_fail(path: str | Path) -> Image.Image:
    """``load_rgb`` for the evaluations, where a bad file is not skipped but reported: a one-line
    ``DataError`` naming it. Same conversions (CMYK, grayscale, 16-bit, huge) as pretraining."""
    try:
        return load_rgb(path)
    except UnreadableImage as e:
        raise DataError(
            f"cannot read image {path}: {e.reason}; remove or replace the file"
        ) from None


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
