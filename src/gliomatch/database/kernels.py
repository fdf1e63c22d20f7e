"""Numba kernel of the database build, with its NumPy reference (tested equal).

``tumor_stats`` makes one pass over a simulated density for everything the table stores about
a tumor (voxel counts above both thresholds, the density-weighted centre, the FLAIR box):
at 128^3 this per-tumor work once cost more than the simulation itself.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["tumor_stats", "tumor_stats_reference"]


@numba.njit(cache=True)
def tumor_stats(u, flair_level, t1gd_level):
    """One pass: FLAIR/T1Gd voxel counts, density-weighted centre (voxels), FLAIR bbox."""
    nf = nt = 0
    w = wi = wj = wk = 0.0
    lo = np.array([1 << 30, 1 << 30, 1 << 30])
    hi = np.array([-1, -1, -1])
    for i in range(u.shape[0]):
        for j in range(u.shape[1]):
            for k in range(u.shape[2]):
                v = u[i, j, k]
                if v <= 0:
                    continue
                w += v
                wi += v * i
                wj += v * j
                wk += v * k
                if v >= flair_level:
                    nf += 1
                    lo[0], lo[1], lo[2] = min(lo[0], i), min(lo[1], j), min(lo[2], k)
                    hi[0], hi[1], hi[2] = max(hi[0], i), max(hi[1], j), max(hi[2], k)
                    if v >= t1gd_level:
                        nt += 1
    w = max(w, 1e-30)
    return nf, nt, np.array([wi / w, wj / w, wk / w]), lo, hi + 1


def tumor_stats_reference(u, flair_level, t1gd_level):
    """:func:`tumor_stats` in plain NumPy: ``(n_flair, n_t1gd, centre, box lo, box hi)``,
    the centre in voxels."""
    u = np.asarray(u)
    pos = u > 0
    w = u[pos].astype(np.float64)
    idx = np.argwhere(pos)
    centre = (idx * w[:, None]).sum(0) / max(w.sum(), 1e-30)
    flair = u >= flair_level
    if flair.any():
        fidx = np.argwhere(flair)
        lo, hi = fidx.min(0), fidx.max(0) + 1
    else:
        lo, hi = np.full(3, 1 << 30), np.zeros(3, dtype=np.int64)
    return int(flair.sum()), int((u >= t1gd_level).sum()), centre, lo, hi
