"""The settings of a curation and their defaults (the flags of ``fastdino curate``).

Why these defaults: docs/curate.md and ``benchmarks/curation.py``. Light on purpose (no torch,
no numpy): the command reads its defaults from here while answering ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdino_cli.errors import ConfigError

METHODS = ("sample", "cluster", "both")
DEDUP_THRESHOLD = 0.99
"""Best F1 on the planted pool copies of ``benchmarks/curation.py`` (0.52 at 0.99; 0.39 at 0.95)."""
REF_THRESHOLD = 0.97
"""Recall first (a leaked test image matters more than a lost pool image): 0.97 catches 40 of the
60 planted eval copies, as many as 0.95 but for 80 fewer pool images removed."""
MIN_SIMILARITY = 0.5
"""A guard, not a tuned value: it cuts nothing the demo model retrieves (0.0-0.6 give the same
list) and lets a query class whose images are far from every pool image retrieve nothing."""


@dataclass(frozen=True)
class CurateSettings:
    """Every setting of a curation (the command's flags); defaults: docs/curate.md."""

    method: str = "sample"
    k: int = 4
    clusters: int | None = None
    per_cluster: int | None = None
    dedup_threshold: float = DEDUP_THRESHOLD
    ref_threshold: float = REF_THRESHOLD
    min_similarity: float = MIN_SIMILARITY
    dedup_k: int = 16
    index: str = "auto"
    shard_size: int = 4096
    batch_size: int = 128
    workers: int = 0
    resize: int | None = None
    crop: int | None = None
    seed: int = 0
    symlinks: bool = False
    figures: bool = True
    memory_budget: int = 2 << 30

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("k", "dedup_k", "shard_size", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("clusters", "per_cluster"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("dedup_threshold", "ref_threshold", "min_similarity"):
            if not -1.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} is a cosine: between -1 and 1")
        if self.workers < 0:
            raise ConfigError("--workers must be 0 or more")
