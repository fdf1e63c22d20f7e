"""Exact top-k Dice search over a block-sparse index, with branch and bound.

For every tumor the index stores its block-sparse masks (:mod:`gliomatch.search.blocks`), its
FLAIR/T1Gd voxel counts and the bounding box of its FLAIR mask. For a query:

1. an upper bound of every tumor's score comes from counts and boxes alone:
   ``|A & B| <= min(|A|, |B inside box_A|)`` (T1Gd lies inside FLAIR, so inside its box; the
   query's voxels inside a box come from its summed-volume table in 8 lookups), and Dice is
   increasing in the intersection (one fused pass, :func:`~gliomatch.search.blocks.
   bound_scores`; the NumPy form is :meth:`BlockIndex.upper_bounds_reference`);
2. the ``max(64, 4k)`` tumors of highest bound (a partial selection, not a sort of all of
   them) are verified: their exact intersections come from the block kernel. Their k-th best
   score is a threshold: only tumors whose bound reaches it can still enter the top k;
3. those are visited in decreasing bound, in growing batches, and the search stops when the
   next bound is *below* the k-th best exact score (a bound equal to it could still tie with
   a smaller id, so it is visited).

The query is packed once (its blocks' counts and bits), visiting only its FLAIR box.

The result is exactly the top-k of an exhaustive scan (the tests compare with ``loop``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from gliomatch.masks import dice_scores, mask_bbox
from gliomatch.search.blocks import (
    bound_scores,
    box_sums_pair,
    encode_blocks,
    intersections,
    mask_box,
    query_blocks,
)

__all__ = ["STAGES", "BlockIndex", "PackedQuery", "dice_scores"]

#: The stages of one exact search, timed into ``stats`` (``<stage>_s``): packing the query,
#: every tumor's bound, the partial selection of the first candidates, their verification and
#: the rest's.
STAGES = ("pack", "bounds", "select", "verify")


@dataclass(frozen=True)
class PackedQuery:
    """A query's dense block counts/bits, voxel counts (T1Gd taken inside FLAIR), FLAIR box
    and the summed-volume tables of both masks over that box, made once per query and reused
    for every batch of candidates."""

    blocks: tuple
    nf: int
    nt: int
    box: np.ndarray
    sat_f: np.ndarray
    sat_t: np.ndarray

    @classmethod
    def pack(cls, flair: np.ndarray, t1gd: np.ndarray) -> PackedQuery:
        flair = np.ascontiguousarray(flair, dtype=bool)
        t1gd = np.ascontiguousarray(t1gd, dtype=bool)
        box = mask_box(flair)
        blocks = query_blocks(flair, t1gd, box)
        sat_f, sat_t = box_sums_pair(flair, t1gd, box)
        return cls(
            blocks, int(blocks[0].sum()), int(blocks[1].sum()), box.astype(np.int32), sat_f,
            sat_t,
        )  # fmt: skip


class BlockIndex:
    """Block-sparse masks of a set of tumors, saved as memory-mappable ``.npy`` files."""

    FILES = ("ptr", "blk", "cf", "ct", "bptr", "bits_f", "bits_t", "nf", "nt", "bbox")

    def __init__(self, arrays: dict, shape):
        self.a = arrays
        self.shape = tuple(shape)
        self.n = len(arrays["nf"])

    # ------------------------------------------------------------------ build
    @classmethod
    def from_masks(
        cls, masks: Iterable[tuple[np.ndarray, np.ndarray]], shape, progress=None, threads: int = 2
    ) -> BlockIndex:
        """Index from an iterable of (flair, t1gd) boolean masks (in id order)."""

        def one(pair):
            f, t = pair
            return encode_blocks(f, t), int(f.sum()), int((t & f).sum()), mask_bbox(f)

        def encoded():
            # bounded chunks: Executor.map would pull the whole iterable into memory at once
            it = iter(masks)
            with ThreadPoolExecutor(max_workers=threads) as pool:
                while chunk := list(islice(it, 64)):
                    yield from pool.map(one, chunk)

        blk, cf, ct, part, bf, bt = [], [], [], [], [], []
        nf, nt, bbox, ptr = [], [], [], [0]
        for count, (enc, a, b, box) in enumerate(encoded(), start=1):
            for store, value in zip((blk, cf, ct, part, bf, bt), enc, strict=True):
                store.append(value)
            nf.append(a)
            nt.append(b)
            bbox.append(box)
            ptr.append(ptr[-1] + len(enc[0]))
            if progress is not None:
                progress(count)
        partial = np.concatenate(part) if part else np.zeros(0, bool)
        bptr = np.full(len(partial), -1, dtype=np.int64)
        bptr[partial] = np.arange(int(partial.sum()))
        arrays = {
            "ptr": np.asarray(ptr, dtype=np.int64),
            "blk": np.concatenate(blk).astype(np.int32) if blk else np.zeros(0, np.int32),
            "cf": np.concatenate(cf) if cf else np.zeros(0, np.int16),
            "ct": np.concatenate(ct) if ct else np.zeros(0, np.int16),
            "bptr": bptr,
            "bits_f": np.concatenate(bf) if bf else np.zeros((0, 8), np.uint64),
            "bits_t": np.concatenate(bt) if bt else np.zeros((0, 8), np.uint64),
            "nf": np.asarray(nf, dtype=np.int64),
            "nt": np.asarray(nt, dtype=np.int64),
            "bbox": np.asarray(bbox, dtype=np.int32).reshape(-1, 6),
        }
        return cls(arrays, shape)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            np.save(folder / f"{name}.npy", self.a[name])
        (folder / "grid.json").write_text(json.dumps({"shape": list(self.shape)}))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> BlockIndex:
        shape = json.loads((folder / "grid.json").read_text())["shape"]
        mode = "r" if mmap else None
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode=mode) for n in cls.FILES}
        return cls(arrays, shape)

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(v).nbytes for v in self.a.values()))

    # ------------------------------------------------------------------ search
    def upper_bounds(self, q: PackedQuery, w_t1gd: float, w_flair: float, part=None):
        """Score bounds of every tumor (of ids ``part[0]:part[1]`` only, when given) for the
        packed query ``q``, in one fused pass (:func:`~gliomatch.search.blocks.bound_scores`)."""
        sl = slice(None) if part is None else slice(*part)
        box, nf, nt = (np.asarray(self.a[k][sl]) for k in ("bbox", "nf", "nt"))
        out = np.empty(len(nf), np.float64)
        bound_scores(box, nf, nt, q.box, q.sat_f, q.sat_t, q.nf, q.nt, float(w_t1gd),
                     float(w_flair), out)  # fmt: skip
        return out

    def upper_bounds_reference(self, flair, t1gd, w_t1gd: float, w_flair: float, part=None):
        """The NumPy form of :meth:`upper_bounds` from the query's masks (obviously correct,
        slow; the tests compare): ``min(|A|, |B inside box_A|)`` per tumor."""
        sl = slice(None) if part is None else slice(*part)
        t1gd = t1gd & flair
        box = np.asarray(self.a["bbox"][sl])
        nf, nt = np.asarray(self.a["nf"][sl]), np.asarray(self.a["nt"][sl])
        inside = [(flair[i0:i1, j0:j1, k0:k1].sum(), t1gd[i0:i1, j0:j1, k0:k1].sum())
                  for i0, j0, k0, i1, j1, k1 in box]  # fmt: skip
        ub_f = np.minimum(nf, [a for a, _ in inside])
        ub_t = np.minimum(nt, [b for _, b in inside])
        return dice_scores(ub_f, ub_t, nf, nt, flair.sum(), t1gd.sum(), w_t1gd, w_flair)[0]

    def exact(self, ids: np.ndarray, q) -> tuple[np.ndarray, np.ndarray]:
        """Exact FLAIR and T1Gd intersections of tumors ``ids`` with the packed query ``q``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out_f = np.empty(len(ids), np.int64)
        out_t = np.empty(len(ids), np.int64)
        a = self.a
        intersections(
            ids,
            a["ptr"],
            a["blk"],
            a["cf"],
            a["ct"],
            a["bptr"],
            a["bits_f"],
            a["bits_t"],
            *q,
            out_f,
            out_t,
        )
        return out_f, out_t

    def scores(self, ids, query: PackedQuery, w_t1gd: float, w_flair: float):
        """Exact ``(score, dice_t1gd, dice_flair)`` of tumors ``ids`` for a packed query."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        inter_f, inter_t = self.exact(ids, query.blocks)
        nf, nt = np.asarray(self.a["nf"]), np.asarray(self.a["nt"])
        return dice_scores(inter_f, inter_t, nf[ids], nt[ids], query.nf, query.nt, w_t1gd, w_flair)

    def search(
        self,
        flair: np.ndarray,
        t1gd: np.ndarray,
        k: int,
        w_t1gd: float,
        w_flair: float,
        stats: dict | None = None,
        part: tuple[int, int] | None = None,
    ):
        """Exact top-k ``(scores, ids)`` by branch and bound; over the tumors with ids in
        ``part[0]:part[1]`` only, when given (one worker's share of a sharded search)."""
        clock = [time.perf_counter()]  # stage boundaries, for ``stats``
        lo, hi = (0, self.n) if part is None else (max(0, part[0]), min(self.n, part[1]))
        q = PackedQuery.pack(flair, t1gd)
        clock.append(time.perf_counter())
        ub = self.upper_bounds(q, w_t1gd, w_flair, part=(lo, hi))
        clock.append(time.perf_counter())
        n = hi - lo
        best_s = np.zeros(0)
        best_i = np.zeros(0, dtype=np.int64)

        def verify(local):
            nonlocal best_s, best_i
            ids = lo + local
            s = self.scores(ids, q, w_t1gd, w_flair)[0]
            all_s = np.concatenate([best_s, s])
            all_i = np.concatenate([best_i, ids])
            keep = np.lexsort((all_i, -all_s))[:k]
            best_s, best_i = all_s[keep], all_i[keep]

        # 1. the first candidates: the highest bounds, by partial selection
        first = min(n, max(64, 4 * k))
        top = np.argpartition(-ub, first - 1)[:first] if first < n else np.arange(n)
        clock.append(time.perf_counter())
        verify(top)
        visited = first
        # 2. the rest that can still enter the top k, in decreasing bound
        if first < n:
            rest = np.ones(n, bool)
            rest[top] = False
            if len(best_i) == k:
                rest &= ub >= best_s[-1]
            cand = np.flatnonzero(rest)
            cand = cand[np.lexsort((cand, -ub[cand]))]
            pos, batch = 0, 2 * first
            while pos < len(cand):
                if len(best_i) == k and ub[cand[pos]] < best_s[-1]:
                    break
                verify(cand[pos : pos + batch])
                pos += min(batch, len(cand) - pos)
                batch *= 2
            visited += pos
        clock.append(time.perf_counter())
        if stats is not None:
            stats["verified"] = visited
            for name, a, b in zip(STAGES, clock[:-1], clock[1:], strict=True):
                stats[f"{name}_s"] = b - a
        return best_s, best_i
