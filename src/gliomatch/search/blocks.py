"""Block-sparse bit masks and exact Dice kernels (numba).

The grid is cut into 8x8x8 blocks. For each tumor the index keeps, per block that touches its
FLAIR mask: the block id, the FLAIR and T1Gd voxel counts, and, for a *partial* block (some but
not all of its 512 voxels set in either mask), both masks as 512-bit words (8 x uint64). The
intersection with a query is then exact:

* block empty in the query or the tumor: 0;
* block full in the tumor: the query's count (and vice versa);
* otherwise: popcount(tumor bits & query bits).

Tumor masks are compact blobs, so a 128^3 tumor takes a few hundred blocks instead of 2 Mi bits.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "BLOCK",
    "block_grid",
    "bound_scores",
    "box_sums",
    "box_sums_pair",
    "encode_blocks",
    "intersections",
    "mask_box",
    "query_blocks",
]

BLOCK = 8
FULL = BLOCK**3  # 512 voxels
WORDS = FULL // 64  # 8 x uint64


def block_grid(shape) -> tuple[int, int, int]:
    return tuple(-(-int(s) // BLOCK) for s in shape)


@numba.njit(cache=True)
def _pack(flair, t1gd, nb, box):
    """Per-block counts and bit words of two boolean masks (dense, all blocks), visiting only
    the voxels of ``box`` (``i0, j0, k0, i1, j1, k1``, half-open: FLAIR's bounding box, or the
    whole grid). T1Gd counts only inside FLAIR."""
    nblk = nb[0] * nb[1] * nb[2]
    cf = np.zeros(nblk, np.int32)
    ct = np.zeros(nblk, np.int32)
    bf = np.zeros((nblk, WORDS), np.uint64)
    bt = np.zeros((nblk, WORDS), np.uint64)
    for i in range(box[0], box[3]):
        for j in range(box[1], box[4]):
            for k in range(box[2], box[5]):
                if flair[i, j, k]:
                    b = ((i // BLOCK) * nb[1] + j // BLOCK) * nb[2] + k // BLOCK
                    bit = ((i % BLOCK) * BLOCK + j % BLOCK) * BLOCK + k % BLOCK
                    w, o = bit // 64, np.uint64(bit % 64)
                    cf[b] += 1
                    bf[b, w] |= np.uint64(1) << o
                    if t1gd[i, j, k]:
                        ct[b] += 1
                        bt[b, w] |= np.uint64(1) << o
    return cf, ct, bf, bt


def query_blocks(flair: np.ndarray, t1gd: np.ndarray, box=None):
    """Dense per-block counts and bits of a query (all blocks; T1Gd taken inside FLAIR).
    ``box``: FLAIR's bounding box when known (only its voxels are visited; the whole grid
    otherwise, which gives the same result)."""
    nb = np.asarray(block_grid(flair.shape), dtype=np.int64)
    if box is None:
        box = np.array([0, 0, 0, *flair.shape], dtype=np.int64)
    box = np.asarray(box, dtype=np.int64)
    return _pack(np.ascontiguousarray(flair), np.ascontiguousarray(t1gd), nb, box)


def encode_blocks(flair: np.ndarray, t1gd: np.ndarray):
    """Sparse block encoding of one tumor.

    Returns ``(blk, cf, ct, partial, bits_f, bits_t)``: block ids touching FLAIR, their counts,
    a flag per block for partial blocks, and the bit words of the partial blocks (in order).
    """
    cf, ct, bf, bt = query_blocks(flair, t1gd)
    blk = np.nonzero(cf)[0].astype(np.int32)
    cfb, ctb = cf[blk], ct[blk]
    partial = (cfb < FULL) | ((ctb > 0) & (ctb < FULL))
    pb = blk[partial]
    return blk, cfb.astype(np.int16), ctb.astype(np.int16), partial, bf[pb], bt[pb]


@numba.njit(cache=True, inline="always")
def _popand(a, b, ia, ib):
    s = 0
    for w in range(WORDS):
        x = a[ia, w] & b[ib, w]
        # popcount (SWAR): numba has no portable popcount intrinsic for uint64
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + (
            (x >> np.uint64(2)) & np.uint64(0x3333333333333333)
        )
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        s += (x * np.uint64(0x0101010101010101)) >> np.uint64(56)
    return s


@numba.njit(parallel=True, cache=True)
def intersections(ids, ptr, blk, cf, ct, bptr, bits_f, bits_t, qcf, qct, qbf, qbt, out_f, out_t):
    """Exact |F_q & F_i| and |T_q & T_i| for the tumors ``ids`` (written to out_f/out_t)."""
    for n in numba.prange(ids.shape[0]):
        i = ids[n]
        sf = 0
        st = 0
        for p in range(ptr[i], ptr[i + 1]):
            b = blk[p]
            qf = qcf[b]
            if qf == 0:
                continue
            tf = cf[p]
            if tf == FULL:
                sf += qf
            elif qf == FULL:
                sf += tf
            else:
                sf += _popand(bits_f, qbf, bptr[p], b)
            qt = qct[b]
            tt = ct[p]
            if qt == 0 or tt == 0:
                continue
            if tt == FULL:
                st += qt
            elif qt == FULL:
                st += tt
            else:
                st += _popand(bits_t, qbt, bptr[p], b)
        out_f[n] = sf
        out_t[n] = st


@numba.njit(cache=True)
def mask_box(mask):  # pragma: no cover (numba)
    """Half-open bounding box ``(i0, j0, k0, i1, j1, k1)`` of a 3-D mask in one pass (zeros
    when empty): :func:`gliomatch.masks.mask_bbox`, which a test checks it equals."""
    s0, s1, s2 = mask.shape
    lo = np.array([s0, s1, s2], np.int64)
    hi = np.zeros(3, np.int64)
    for i in range(s0):
        for j in range(s1):
            first = -1
            for k in range(s2):
                if mask[i, j, k]:
                    first = k
                    break
            if first < 0:
                continue  # an empty row
            last = first
            for k in range(s2 - 1, first, -1):
                if mask[i, j, k]:
                    last = k
                    break
            lo[0] = min(lo[0], i)
            hi[0] = max(hi[0], i + 1)
            lo[1] = min(lo[1], j)
            hi[1] = max(hi[1], j + 1)
            lo[2] = min(lo[2], first)
            hi[2] = max(hi[2], last + 1)
    out = np.zeros(6, np.int64)
    if hi[0] > 0:
        out[:3] = lo
        out[3:] = hi
    return out


def box_sums(mask: np.ndarray, box) -> np.ndarray:
    """Summed-volume table of ``mask`` inside ``box`` (half-open ``i0, j0, k0, i1, j1, k1``):
    ``S[a, b, c]`` = the set voxels of ``mask[i0:i0+a, j0:j0+b, k0:k0+c]``, so any sub-box's
    count is 8 lookups (:func:`bound_scores`)."""
    i0, j0, k0, i1, j1, k1 = (int(v) for v in box)
    out = np.zeros((i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1), np.int32)
    crop = np.asarray(mask[i0:i1, j0:j1, k0:k1], dtype=np.int32)
    out[1:, 1:, 1:] = crop.cumsum(0).cumsum(1).cumsum(2)
    return out


@numba.njit(cache=True)
def box_sums_pair(flair, t1gd, box):  # pragma: no cover (numba)
    """:func:`box_sums` of FLAIR and of T1Gd inside FLAIR, both in one pass (inclusion-
    exclusion: each entry from its three lower neighbours); a test checks it against
    :func:`box_sums`."""
    i0, j0, k0, i1, j1, k1 = box[0], box[1], box[2], box[3], box[4], box[5]
    sf = np.zeros((i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1), np.int32)
    st = np.zeros_like(sf)
    for a in range(1, i1 - i0 + 1):
        for b in range(1, j1 - j0 + 1):
            for c in range(1, k1 - k0 + 1):
                f = flair[i0 + a - 1, j0 + b - 1, k0 + c - 1]
                t = f and t1gd[i0 + a - 1, j0 + b - 1, k0 + c - 1]
                sf[a, b, c] = (f + sf[a - 1, b, c] + sf[a, b - 1, c] + sf[a, b, c - 1]
                               - sf[a - 1, b - 1, c] - sf[a - 1, b, c - 1] - sf[a, b - 1, c - 1]
                               + sf[a - 1, b - 1, c - 1])  # fmt: skip
                st[a, b, c] = (t + st[a - 1, b, c] + st[a, b - 1, c] + st[a, b, c - 1]
                               - st[a - 1, b - 1, c] - st[a - 1, b, c - 1] - st[a, b - 1, c - 1]
                               + st[a - 1, b - 1, c - 1])  # fmt: skip
    return sf, st


@numba.njit(cache=True, inline="always")
def _box_count(sat, qbox, lo0, lo1, lo2, hi0, hi1, hi2):  # pragma: no cover (numba)
    a0, a1, a2 = lo0 - qbox[0], lo1 - qbox[1], lo2 - qbox[2]
    b0, b1, b2 = hi0 - qbox[0], hi1 - qbox[1], hi2 - qbox[2]
    return (sat[b0, b1, b2] - sat[a0, b1, b2] - sat[b0, a1, b2] - sat[b0, b1, a2]
            + sat[a0, a1, b2] + sat[a0, b1, a2] + sat[b0, a1, a2] - sat[a0, a1, a2])  # fmt: skip


@numba.njit(parallel=True, cache=True)
def bound_scores(bbox, nf, nt, qbox, sat_f, sat_t, qf, qt, w_t1gd, w_flair, out):
    """Upper bounds of every tumor's score from counts and boxes alone, in one fused pass (the
    branch-and-bound bound of :mod:`gliomatch.search.engine`; its NumPy form is
    ``BlockIndex.upper_bounds_reference``). A tumor's FLAIR (and T1Gd, inside it) lies in its
    box, so ``|A & B| <= min(|A|, |B inside box_A|)``: the query's voxels in the tumor's box,
    from the query's summed-volume tables ``sat_f``/``sat_t`` over its own box ``qbox``."""
    for n in numba.prange(nf.shape[0]):
        lo0 = max(bbox[n, 0], qbox[0])
        lo1 = max(bbox[n, 1], qbox[1])
        lo2 = max(bbox[n, 2], qbox[2])
        hi0 = min(bbox[n, 3], qbox[3])
        hi1 = min(bbox[n, 4], qbox[4])
        hi2 = min(bbox[n, 5], qbox[5])
        in_f = 0
        in_t = 0
        if hi0 > lo0 and hi1 > lo1 and hi2 > lo2:
            in_f = _box_count(sat_f, qbox, lo0, lo1, lo2, hi0, hi1, hi2)
            in_t = _box_count(sat_t, qbox, lo0, lo1, lo2, hi0, hi1, hi2)
        f, t = nf[n], nt[n]
        ub_f = min(f, in_f)
        ub_t = min(t, in_t)
        den_f = f + qf
        den_t = t + qt
        d_f = 1.0 if den_f == 0 else 2.0 * ub_f / den_f
        d_t = 1.0 if den_t == 0 else 2.0 * ub_t / den_t
        out[n] = w_t1gd * d_t + w_flair * d_f
