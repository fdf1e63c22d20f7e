"""The search strategies: ``loop`` (ground truth), ``exact``, ``ds64``, ``ds32``.

* ``loop`` -- the published baseline, deliberately simple: for every tumor load its density,
  threshold at 0.2 / 0.6 and compute both Dice scores at full resolution; parallel over
  processes. It needs no index and is the ground truth for everything else.
* ``exact`` -- block-sparse bit masks + branch and bound (:mod:`gliomatch.search.engine`):
  the same top-k as ``loop``, orders of magnitude faster.
* ``ds64`` / ``ds32`` -- the papers' downsampled searches: masks zoomed to 64^3 / 32^3 with
  order-0 (nearest-neighbour) interpolation, Dice computed at that resolution (searched exactly
  at that resolution with the same engine).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gliomatch.database import Database
from gliomatch.errors import GliomatchError
from gliomatch.files import worker_pool
from gliomatch.masks import dice_scores, downsample, mask_bbox, masks_from_codes, threshold
from gliomatch.search.base import Query, Strategy, register_strategy, top_k
from gliomatch.search.engine import BlockIndex, PackedQuery

__all__ = ["DownsampledStrategy", "ExactStrategy", "LoopStrategy", "downsample"]


# ----------------------------------------------------------------------------------- loop

_WORKER_DB = {}


def _loop_counts(args):
    """Intersections of a chunk of tumors with the query (runs in a worker process)."""
    path, ids, flair, t1gd = args

    db = _WORKER_DB.get(path)
    if db is None:
        db = _WORKER_DB[path] = Database.open(path)
    out = np.zeros((len(ids), 4), dtype=np.int64)
    for n, i in enumerate(ids):
        f, t = threshold(db.density(int(i)))
        out[n] = (
            np.count_nonzero(f & flair),
            np.count_nonzero(t & t1gd),
            np.count_nonzero(f),
            np.count_nonzero(t),
        )
    return out


@register_strategy("loop")
class LoopStrategy(Strategy):
    """Full-resolution Dice with every tumor, loaded one by one (parallel over processes)."""

    name = "loop"
    exact_scores = True
    exact_ranking = True
    needs_index = False

    def __init__(self, db, *, workers: int | None = None, ids=None, **kw):
        super().__init__(db, **kw)
        self.workers = workers or os.cpu_count() or 1
        self.ids = np.arange(len(db)) if ids is None else np.asarray(ids, dtype=np.int64)

    def scores(self, query: Query, ids=None):
        """Exact ``(score, dice_t1gd, dice_flair)`` of the tumors ``ids`` (default: all of
        this strategy's) for ``query``: the ground truth, as the block index gives it."""
        self._check_query(query)
        ids = self.ids if ids is None else np.asarray(ids, dtype=np.int64)
        flair, t1gd = query.flair, query.t1gd
        chunks = [c for c in np.array_split(ids, max(1, self.workers * 4)) if len(c)]
        args = [(str(self.db.path), c, flair, t1gd) for c in chunks]
        if self.workers == 1 or len(chunks) == 1:
            parts = [_loop_counts(a) for a in args]
        else:
            with worker_pool(self.workers) as pool:
                parts = list(pool.map(_loop_counts, args))
        c = np.concatenate(parts)
        return dice_scores(
            c[:, 0], c[:, 1], c[:, 2], c[:, 3], int(flair.sum()), int(t1gd.sum()),
            self.w_t1gd, self.w_flair,
        )  # fmt: skip

    def _search(self, query: Query, k: int):
        return top_k(self.scores(query)[0], self.ids, min(k, len(self.ids)))


# ------------------------------------------------------------------------- block indexes


class _BlockStrategy(Strategy):
    """A strategy answered by a :class:`BlockIndex` at ``size`` voxels per side."""

    size: int | None = None  # None: the database's own resolution

    @property
    def grid_size(self) -> int:
        return self.db.resolution if self.size is None else min(self.size, self.db.resolution)

    @property
    def exact_scores(self) -> bool:
        """Exact at the database's own resolution (``exact``, or ``dsN`` with N >= it)."""
        return self.grid_size == self.db.resolution

    @property
    def exact_ranking(self) -> bool:
        return self.exact_scores

    def _meta(self):
        return {**super()._meta(), "grid": self.grid_size}

    def _masks(self):
        s = self.grid_size
        for _, codes in self.db.iter_batches(batch_size=32):
            for q in codes:
                f, t = masks_from_codes(q)
                yield downsample(f, s), downsample(t, s)

    def _build(self, folder: Path) -> None:
        index = BlockIndex.from_masks(
            self._masks(), (self.grid_size,) * 3, progress=lambda n: self._report(n, "indexing")
        )
        index.save(folder)

    def _load(self, folder: Path) -> None:
        self.index = BlockIndex.load(folder)

    def check_sample(self, ids) -> bool:
        """Re-derive the index entries of tumors ``ids`` from their stored densities: each
        one's voxel counts and box, and its FLAIR/T1Gd intersections with every other sampled
        tumor computed through the index (the block arrays, both bit planes) against NumPy on
        the masks. A resealed index whose arrays were edited or swapped fails here although
        its checksums pass. Raises :class:`GliomatchError` naming the first tumor that
        differs; returns True."""
        self.load()
        s, a = self.grid_size, self.index.a
        ids = np.asarray(ids, dtype=np.int64)
        masks = []
        for i in ids:
            f, t = (downsample(m, s) for m in self.db.masks(int(i)))
            masks.append((f, t & f))
        for i, (f, t) in zip(ids, masks, strict=True):
            stored = (int(a["nf"][i]), int(a["nt"][i]), np.asarray(a["bbox"][i]).tolist())
            if stored != (int(f.sum()), int(t.sum()), mask_bbox(f).tolist()):
                raise GliomatchError(
                    f"index {self.index_path}: tumor {i}'s voxel counts or box differ from its "
                    "density; rebuild the index (`gliomatch db index`)"
                )
            inter_f, inter_t = self.index.exact(ids, PackedQuery.pack(f, t).blocks)
            want_f = [int((f & g).sum()) for g, _ in masks]
            want_t = [int((t & h).sum()) for _, h in masks]
            if inter_f.tolist() != want_f or inter_t.tolist() != want_t:
                raise GliomatchError(
                    f"index {self.index_path}: tumor {i}'s stored masks differ from its density "
                    "(FLAIR/T1Gd overlaps through the index are wrong); rebuild the index "
                    "(`gliomatch db index`)"
                )
        return True

    def scores(self, query: Query, ids=None):
        """Exact ``(score, dice_t1gd, dice_flair)`` of the tumors ``ids`` (default: all) for
        ``query``, at this strategy's grid: the ground truth that re-ranking and the
        evaluation use."""
        self._check_query(query)
        self.load()
        s = self.grid_size
        packed = PackedQuery.pack(downsample(query.flair, s), downsample(query.t1gd, s))
        ids = np.arange(self.index.n) if ids is None else np.asarray(ids, dtype=np.int64)
        return self.index.scores(ids, packed, self.w_t1gd, self.w_flair)

    def _search(self, query: Query, k: int):
        s = self.grid_size
        f = downsample(query.flair, s)
        t = downsample(query.t1gd, s)
        self.last_stats = {}
        return self.index.search(f, t, k, self.w_t1gd, self.w_flair, stats=self.last_stats)


@register_strategy("exact")
class ExactStrategy(_BlockStrategy):
    """Exact full-resolution top-k (equals ``loop``)."""

    name = "exact"


@register_strategy("ds64", size=64)
@register_strategy("ds32", size=32)
class DownsampledStrategy(_BlockStrategy):
    """Dice on masks downsampled (order 0) to ``size``^3, as in the papers."""

    def __init__(self, db, *, size: int = 64, **kw):
        self.size = int(size)
        self.name = f"ds{self.size}"
        super().__init__(db, **kw)
