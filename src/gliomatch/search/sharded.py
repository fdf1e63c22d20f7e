"""Exact search spread over Dask workers: each searches its share of the ids, the client merges.

A database of a million tumors has an exact index of tens of GB, more than one machine's
memory. Each worker memory-maps the index files (it reads only the pages of its share of the
tumors, plus the small per-tumor arrays: counts and boxes) and returns the top-k of its id range
with the same branch and bound as the local search; the client keeps the k best of the
``parts x k`` candidates, ordered by (score descending, id ascending) like the local search.
The global top-k is the top-k of the union of the local top-ks, so the answer equals the
single-process one, ties included (a test checks it on two local workers).

Workers must see the database folder at the same path (a shared file system), as for a
distributed build. The client checks the index files against the manifest before the search.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gliomatch.cluster import check_scheduler, dask_client, worker_count
from gliomatch.errors import GliomatchError
from gliomatch.files import cache_key
from gliomatch.masks import downsample
from gliomatch.search.base import Query, Strategy
from gliomatch.search.engine import BlockIndex
from gliomatch.search.strategies import _BlockStrategy

__all__ = ["ShardedStrategy", "maybe_sharded", "merge_top_k"]

#: Indexes a worker process has memory-mapped: (index folder, its meta digest) -> BlockIndex.
_WORKER_INDEXES: dict[tuple[str, str], BlockIndex] = {}


def _part_search(folder: str, digest: str, part, packed, shape, k, w_t1gd, w_flair):
    """One worker's share: top-k of ids ``part`` for every query (runs in a worker process)."""
    index = _WORKER_INDEXES.get((folder, digest))
    if index is None:
        from pathlib import Path

        index = _WORKER_INDEXES[(folder, digest)] = BlockIndex.load(Path(folder))
    n_vox = int(np.prod(shape))
    scores, ids = [], []
    for f_bits, t_bits in packed:
        f = np.unpackbits(f_bits, count=n_vox).astype(bool).reshape(shape)
        t = np.unpackbits(t_bits, count=n_vox).astype(bool).reshape(shape)
        s, i = index.search(f, t, k, w_t1gd, w_flair, part=part)
        scores.append(s)
        ids.append(i)
    return scores, ids


def merge_top_k(parts: list[tuple[np.ndarray, np.ndarray]], k: int):
    """The k best of several (scores, ids) lists: score descending, then id ascending."""
    s = np.concatenate([p[0] for p in parts])
    i = np.concatenate([p[1] for p in parts]).astype(np.int64)
    keep = np.lexsort((i, -s))[:k]
    return s[keep], i[keep]


class ShardedStrategy(Strategy):
    """A block-index strategy (``exact``, ``ds64``, ``ds32``) searched by Dask workers.

    ``client`` is a connected ``dask.distributed.Client`` (see
    :func:`gliomatch.cluster.dask_client`); ``parts`` id ranges (default: one per worker).
    """

    def __init__(self, base: Strategy, client, parts: int | None = None):
        self.check(base)
        super().__init__(base.db, w_t1gd=base.w_t1gd, w_flair=base.w_flair, progress=base.progress)
        self.base, self.client = base, client
        self.name = base.name
        self.exact_scores, self.exact_ranking = base.exact_scores, base.exact_ranking
        self.parts = parts or worker_count(client)
        if self.parts < 1:
            raise GliomatchError(f"parts must be >= 1, got {self.parts}")

    @staticmethod
    def check(base: Strategy) -> None:
        if not isinstance(base, _BlockStrategy):
            raise GliomatchError(
                f"strategy {base.name!r} cannot be sharded; use exact, ds64 or ds32"
            )

    def ensure_ready(self) -> Strategy:
        self.base.ensure_ready()  # built if needed
        return self.load()

    def load(self) -> Strategy:
        self.base.load()  # checked against the manifest; the workers read its files
        self._loaded = True
        return self

    def _search(self, query: Query, k: int):
        s, i = self._search_batch([query], k)
        return s[0], i[0]

    def _search_batch(self, queries: list[Query], k: int):
        size = self.base.grid_size
        shape = (size,) * 3
        packed = [
            (
                np.packbits(downsample(q.flair, size)),
                np.packbits(downsample(q.t1gd & q.flair, size)),
            )
            for q in queries
        ]
        n = len(self.db)
        edges = np.linspace(0, n, min(self.parts, n) + 1).astype(int)
        folder = str(self.base.index_path.resolve())
        digest = cache_key(files=self.db.recorded_files(self.name))  # a rebuilt index: reloaded
        data = self.client.scatter([packed], broadcast=True, hash=False)[0]
        futures = [
            self.client.submit(
                _part_search,
                folder,
                digest,
                (int(lo), int(hi)),
                data,
                shape,
                k,
                self.w_t1gd,
                self.w_flair,
                pure=False,
            )
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            if hi > lo
        ]
        results = self.client.gather(futures)
        out_s, out_i = [], []
        for q in range(len(queries)):
            s, i = merge_top_k([(r[0][q], r[1][q]) for r in results], k)
            out_s.append(s)
            out_i.append(i)
        return np.stack(out_s), np.stack(out_i)


@contextlib.contextmanager
def maybe_sharded(strategy: Strategy, scheduler: str | None = None, workers: int | None = None):
    """``strategy`` itself, or spread over a Dask scheduler (``tcp://HOST:PORT``) or a local
    cluster of ``workers`` processes when either is given; the cluster is closed on exit."""
    check_scheduler(scheduler)
    if scheduler is None and workers is None:
        yield strategy
        return
    ShardedStrategy.check(strategy)  # before a cluster starts
    with dask_client(scheduler, workers) as client:
        yield ShardedStrategy(strategy, client)
