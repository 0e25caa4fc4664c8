"""What ``curate`` reads: the pool, the query classes, the evaluation images, the output folder.

The pool is any folder tree of images or a ``.txt`` list (``data.images.scan_images``, the same
reader as pretraining). The query folder is labelled when it has class sub-folders
(``ROOT/<class>/**/<image>``, ``data.labelled.scan_labelled_folder``) and is one class, named
after the folder, when its images lie directly in it. Evaluation folders (``--eval``, any
layout) are only deduplicated against. The output folder must be new, empty, or an earlier curation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fastdino_cli.curate.embed import ImageSet
from fastdino_cli.data.images import is_image_file, scan_images
from fastdino_cli.data.labelled import scan_labelled_folder
from fastdino_cli.errors import DataError

MARKERS = (".lock", "embed")


def pool_set(pool: str | Path) -> ImageSet:
    path = Path(pool).expanduser()
    if not path.exists():
        raise DataError(f"--pool {path} does not exist; pass a folder of images or a .txt list")
    return ImageSet("pool", scan_images(path))


def query_set(query: str | Path, log: Callable[[str], None] = lambda _: None) -> ImageSet:
    """Labelled query images; a flat folder is one class named after it."""
    path = Path(query).expanduser()
    if not path.is_dir():
        raise DataError(f"--query {path} is not a folder; pass a folder of images or of classes")
    subdirs = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        try:
            lab = scan_labelled_folder(path, what="--query", min_classes=1)
        except DataError:
            lab = None  # class folders without images: read the folder as flat
        if lab is not None:
            loose = [p for p in path.iterdir() if p.is_file() and is_image_file(p)]
            if loose:
                log(
                    f"warning: {len(loose)} image(s) lie directly in {path}, outside its class "
                    "folders, and are not used as queries"
                )
            return ImageSet("query", lab.paths, lab.labels, lab.class_names)
    files = scan_images(path)
    return ImageSet("query", files, [0] * len(files), [path.resolve().name or "query"])


def eval_set(folders: Sequence[str | Path]) -> ImageSet | None:
    """The images of every ``--eval`` folder (any tree), or None when there is none."""
    files: set[Path] = set()
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.exists():
            raise DataError(f"--eval {path} does not exist")
        files.update(scan_images(path))
    return ImageSet("eval", sorted(files)) if folders else None


def check_out(out: str | Path) -> Path:
    """``out`` as a Path: a new or empty folder, or one an earlier ``curate`` wrote."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"--out {path} is a file; pass a folder for the curation outputs")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in MARKERS):
        raise DataError(
            f"--out {path} is not empty and holds no earlier curation; choose a new or empty "
            "folder (curate never writes over other files)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
