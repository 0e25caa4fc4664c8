"""Seeds of a run's random streams, mixed from integers: one rule for the data and the loop.

Why a module of its own, below ``data/`` and ``train/``: exact resume needs every random draw
of a run to be a pure function of the run's seed and the place it is drawn for (the step, the
sample index, the rank), never of which process or worker drew it or of how many draws came
before. The samples (``data/multicrop.py``), the loader's own generator (``train/loader.py``)
and the per-rank training stream (``train/build.py``) all derive their seeds here; the loop used
to import this from the multi-crop module, tying the training loop to the augmentation code.

Streams that are not per-sample are told apart by a tag, the last integer mixed in.
"""

from __future__ import annotations

import numpy as np

TRAINING_STREAM = 1
"""``seed_for(seed, rank, TRAINING_STREAM)``: the global torch RNG of a rank's training steps
(stochastic depth), seeded once the model is built."""
LOADER_STREAM = 2
"""``seed_for(seed, start_step, LOADER_STREAM)``: the DataLoader's own generator (so creating
its iterator consumes nothing from the global RNG)."""


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (negative values allowed) by ``numpy.SeedSequence``:
    distinct tuples give independent streams."""
    ss = np.random.SeedSequence([p & 0xFFFFFFFFFFFFFFFF for p in parts])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
