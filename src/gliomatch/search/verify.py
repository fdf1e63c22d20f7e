"""``db verify``'s checks of the search indexes against the data they were derived from.

Checksums catch a damaged file, not a resealed one: an index whose arrays were edited and
whose manifest entry was recomputed passes them. Each index that can (:meth:`check_sample`)
re-derives its entries for a fixed, seeded sample of tumors from their stored densities.
"""

from __future__ import annotations

import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.progress import Progress, report
from gliomatch.search.base import get_strategy

__all__ = ["SAMPLE", "sample_ids", "verify_indexes"]

#: Tumors re-derived per index (with the first and the last): a swapped, shifted or edited
#: array shows in any of them.
SAMPLE = 16


def sample_ids(n: int, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """A fixed sample of tumor ids in ``0..n-1`` (seeded; the first and last included)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(n, size=min(n, size), replace=False)
    return np.unique(np.concatenate([ids, [0, n - 1]])).astype(np.int64)


def verify_indexes(db, *, progress: Progress | None = None) -> dict:
    """``{index name: "entries re-derived" | "checksums only"}`` for every index listed in the
    manifest; raises :class:`GliomatchError` at the first index whose sample differs."""
    names = [k for k in db.recorded_keys() if not k.startswith("models/")]
    ids = sample_ids(len(db))
    out = {}
    for n, name in enumerate(names, 1):
        try:
            strategy = get_strategy(name, db)
        except GliomatchError:  # an index of a strategy this gliomatch does not know
            strategy = None
        checked = strategy is not None and strategy.check_sample(ids)
        out[name] = "entries re-derived" if checked else "checksums only"
        report(progress, n, len(names), "checking index entries")
    return out
