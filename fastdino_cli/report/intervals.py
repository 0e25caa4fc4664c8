"""Mean, spread and a 95% percentile-bootstrap confidence interval over seeds, and of differences.

One seed of a small run cannot separate two recipes: the spread between seeds of the same recipe
is often as large as the difference between recipes. The report therefore groups runs by recipe
(``report.recipes``) and summarises each metric over the seeds with

* the mean and the sample standard deviation (``ddof=1``);
* a percentile bootstrap interval of the mean: ``N_BOOT`` resamples of the seeds' values with
  replacement, drawn from ``numpy.random.default_rng(seed)`` as one ``integers(0, n, (N_BOOT,
  n))`` index array, the mean of each resample, and the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` percentiles of those means (``numpy.percentile``, linear interpolation).

A difference to the baseline recipe is paired by seed when at least two seeds were run by both
recipes (the mean of the per-seed differences over the shared seeds, resampled as above), and
unpaired otherwise (each recipe's values resampled on its own, the difference of the two means).
The generator is seeded afresh for every interval, so every number is deterministic and does not
depend on which other metrics the report holds. With fewer than two values (or pairs) there is
no interval (NaN): one seed has no spread to resample.

With 3-5 seeds the percentile bootstrap is narrower than a t-interval would be (it cannot see
beyond the values it has); read it as a lower bound on the uncertainty, not a test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
"""Bootstrap resamples per interval."""
LEVEL = 0.95
"""Coverage of every interval."""
SEED = 0
"""Seed of the generator every interval starts from."""


@dataclass(frozen=True)
class Interval:
    """A metric over the seeds of one recipe."""

    mean: float
    std: float
    """Sample standard deviation (NaN for one value)."""
    low: float
    high: float
    """The bootstrap interval of the mean (NaN for fewer than two values)."""
    n: int
    """Values (seeds) it is computed from."""


@dataclass(frozen=True)
class Difference:
    """``other - baseline`` of one metric: its mean and bootstrap interval."""

    mean: float
    low: float
    high: float
    paired: bool
    """True: the mean of per-seed differences over the seeds both recipes ran."""
    n: int
    """Pairs when paired, else the other recipe's values."""
    n_baseline: int
    """Baseline values used (the pairs again when paired)."""

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero (NaN interval: False)."""
        return bool(self.low > 0 or self.high < 0)


def finite(values: Sequence[float]) -> np.ndarray:
    """The finite values as a float array (a missing measurement is left out, not zero)."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def bootstrap_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``."""
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def percentile_interval(stats: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of the bootstrap statistics."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def summarize(
    values: Sequence[float], *, seed: int = SEED, n_boot: int = N_BOOT, level: float = LEVEL
) -> Interval:
    """Mean, standard deviation and bootstrap interval of the mean of the finite ``values``."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    low, high = percentile_interval(bootstrap_means(x, np.random.default_rng(seed), n_boot), level)
    return Interval(mean, float(x.std(ddof=1)), low, high, n)


def _by_seed(pairs: Sequence[tuple[int | None, float]]) -> dict[int, float]:
    """Seed -> the finite value, for seeds that occur once (a repeated seed cannot pair)."""
    seen: dict[int, list[float]] = {}
    for s, v in pairs:
        if s is not None and v is not None and math.isfinite(v):
            seen.setdefault(int(s), []).append(float(v))
    return {s: vs[0] for s, vs in seen.items() if len(vs) == 1}


def difference(
    baseline: Sequence[tuple[int | None, float]],
    other: Sequence[tuple[int | None, float]],
    *,
    seed: int = SEED,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
) -> Difference:
    """``other - baseline`` from (seed, value) pairs: paired by seed where two or more match."""
    rng = np.random.default_rng(seed)
    b_seed, o_seed = _by_seed(baseline), _by_seed(other)
    shared = sorted(set(b_seed) & set(o_seed))
    if len(shared) >= 2:
        d = np.array([o_seed[s] - b_seed[s] for s in shared])
        low, high = percentile_interval(bootstrap_means(d, rng, n_boot), level)
        return Difference(float(d.mean()), low, high, True, len(d), len(d))
    b, o = finite([v for _, v in baseline]), finite([v for _, v in other])
    if len(b) == 0 or len(o) == 0:
        return Difference(math.nan, math.nan, math.nan, False, len(o), len(b))
    mean = float(o.mean() - b.mean())
    if len(b) < 2 or len(o) < 2:
        return Difference(mean, math.nan, math.nan, False, len(o), len(b))
    stats = bootstrap_means(o, rng, n_boot) - bootstrap_means(b, rng, n_boot)
    low, high = percentile_interval(stats, level)
    return Difference(mean, low, high, False, len(o), len(b))
