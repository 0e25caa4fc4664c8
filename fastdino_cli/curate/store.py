"""The curation folder (``--out``): where each stage writes and how a finished part is recognised.

::

    OUT/
      .lock                        one curation at a time (``rundir.RunLock``)
      embed/params.json            what the features depend on (weights, transform, file lists)
      embed/<set>/files.txt        the images of the set (pool, query, eval) in their order
      embed/<set>/shard_00000.npy  (rows, D) float32 L2-normalised features of shard 0
      embed/<set>/shard_00000.json the files those rows belong to, the unreadable ones and why;
                                   written after the .npy: the shard's completion marker
      embed/<set>/done.json        the set is complete (counts, dimension)
      neighbours/shard_00000.npz   nearest pool neighbours of the pool rows of shard 0
      dedup/ retrieve/             stage outputs, each folder finished by its done.json
      curated.txt, summary.json, figures/

Every file goes through ``fileio.atomic_write``: a kill leaves the whole file or none of it (and
a temporary file that the next run deletes). A stage is finished when its ``done.json`` holds the
same parameters as this run; a shard when its marker exists and its row count matches. Anything
else is computed again. Rows of a set are its readable files in order; ``FeatureBank`` maps them
back to files and reads them shard by shard (memory-mapped), so no stage needs the whole pool in
memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastdino_cli.errors import DataError
from fastdino_cli.fileio import atomic_write, write_text

DONE = "done.json"
STARTED = "started.json"
FILES = "files.txt"


def write_json(path: Path, obj: Any, *, sort_keys: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable (then it is recomputed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def write_lines(path: Path, lines: Sequence[str]) -> None:
    write_text(path, "".join(f"{line}\n" for line in lines))


def digest(obj: Any) -> str:
    """A short stable hash of JSON-able parameters (what a later stage's parameters include)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def remove_stale_temp_files(folder: Path) -> None:
    """Delete what a killed writer left behind (``atomic_write`` temp files: ``.NAME.*.tmp``)."""
    if folder.is_dir():
        for tmp in folder.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)


@dataclass
class Stage:
    """One stage folder and the parameters its outputs were computed with."""

    folder: Path
    params: dict[str, Any]

    @property
    def marker(self) -> Path:
        return self.folder / DONE

    def is_done(self) -> bool:
        found = read_json(self.marker)
        return isinstance(found, dict) and found.get("params") == plain(self.params)

    def info(self) -> dict[str, Any]:
        found = read_json(self.marker) or {}
        return dict(found.get("info") or {})

    def begin(self) -> None:
        """Start or resume the stage: its marker goes first, so a kill means 'not done'. Partial
        outputs of the same parameters are kept (resumable shards); of other ones, deleted."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.marker.unlink(missing_ok=True)
        started = read_json(self.folder / STARTED)
        if not isinstance(started, dict) or started.get("params") != plain(self.params):
            for old in self.folder.iterdir():
                if old.is_file():
                    old.unlink()
            write_json(self.folder / STARTED, {"params": plain(self.params)})
        remove_stale_temp_files(self.folder)

    def finish(self, info: Mapping[str, Any] | None = None) -> None:
        write_json(self.marker, {"params": plain(self.params), "info": dict(info or {})})

    @property
    def digest(self) -> str:
        return digest(self.params)


def plain(obj: Any) -> Any:
    """Parameters as they read back from JSON (tuples -> lists), so equality is exact."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ------------------------------------------------------------------------------------------
# embedding shards
# ------------------------------------------------------------------------------------------


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def shard_complete(folder: Path, i: int) -> dict[str, Any] | None:
    """The marker of shard ``i`` when the shard is whole (marker present, row count right)."""
    meta = read_json(folder / f"{shard_name(i)}.json")
    if not isinstance(meta, dict) or "rows" not in meta:
        return None
    try:
        feats = np.load(folder / f"{shard_name(i)}.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if feats.ndim != 2 or feats.shape[0] != len(meta["rows"]):
        return None
    return meta


def write_shard(
    folder: Path, i: int, feats: np.ndarray, rows: Sequence[int], unreadable: Mapping[int, str]
) -> None:
    """Features first, then the marker naming their files: a kill in between redoes the shard."""
    write_npy(folder / f"{shard_name(i)}.npy", feats.astype(np.float32, copy=False))
    meta = {
        "rows": [int(r) for r in rows],
        "unreadable": {str(k): v for k, v in unreadable.items()},
    }
    write_json(folder / f"{shard_name(i)}.json", meta)


@dataclass
class FeatureBank:
    """The features of one set, shard by shard: row ``r`` is file ``file_index[r]``."""

    folder: Path
    files: list[Path]
    shard_files: list[np.ndarray]
    dim: int
    unreadable: dict[int, str] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path) -> FeatureBank:
        done = read_json(folder / DONE)
        if not isinstance(done, dict):
            raise DataError(f"{folder} holds no finished embeddings; run `fastdino curate` again")
        files = [Path(p) for p in (folder / FILES).read_text().splitlines()]
        shard_files, unreadable = [], {}
        for i in range(int(done["info"]["shards"])):
            meta = shard_complete(folder, i)
            if meta is None:
                raise DataError(f"{folder}/{shard_name(i)} is incomplete; run the command again")
            shard_files.append(np.asarray(meta["rows"], dtype=np.int64))
            unreadable.update({int(k): v for k, v in meta["unreadable"].items()})
        return cls(folder, files, shard_files, int(done["info"]["dim"]), unreadable)

    @property
    def offsets(self) -> np.ndarray:
        """Row offset of each shard, and the total at the end."""
        return np.concatenate([[0], np.cumsum([len(s) for s in self.shard_files])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def file_index(self) -> np.ndarray:
        """(rows,) index into ``files`` of each row."""
        if not self.shard_files:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.shard_files)

    def paths(self, rows: Sequence[int] | np.ndarray) -> list[Path]:
        fi = self.file_index
        return [self.files[int(fi[r])] for r in rows]

    def shard(self, i: int) -> np.ndarray:
        """Features of shard ``i``, memory-mapped (read from disk on use)."""
        return np.load(self.folder / f"{shard_name(i)}.npy", mmap_mode="r")

    @property
    def num_shards(self) -> int:
        return len(self.shard_files)

    def chunks(self, mask: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row ids, features) per shard, only the rows where ``mask`` is True."""
        off = self.offsets
        for i in range(self.num_shards):
            ids = np.arange(off[i], off[i + 1], dtype=np.int64)
            feats = self.shard(i)
            if mask is not None:
                keep = mask[off[i] : off[i + 1]]
                ids, feats = ids[keep], feats[keep]
            if len(ids):
                yield ids, np.array(feats, dtype=np.float32)  # read into memory (writable)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Features of the given rows (any order), gathered from their shards."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        off = self.offsets
        shard_of = np.searchsorted(off, ids, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            out[sel] = self.shard(int(s))[ids[sel] - off[s]]
        return out

    def load(self, mask: np.ndarray | None = None) -> np.ndarray:
        """All features (of the masked rows) in memory: for small sets (query, eval)."""
        parts = [f for _, f in self.chunks(mask)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return len(self) * self.dim * 4
