"""Mask primitives: the two thresholds, the uint8 density codes, Dice, boxes, downsampling.

The papers' query thresholds a density at u = 0.2 (FLAIR, whole tumor) and u = 0.6 (T1Gd,
tumor core). Everything that thresholds, encodes, compares or shrinks masks uses these
functions, so the levels and the Dice convention (1 when both masks are empty) live here once.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage

from gliomatch.errors import GliomatchError

__all__ = [
    "FLAIR_CODE",
    "FLAIR_LEVEL",
    "SCALE",
    "T1GD_CODE",
    "T1GD_LEVEL",
    "decode",
    "dice",
    "dice_from_counts",
    "dice_scores",
    "downsample",
    "encode",
    "encode_reference",
    "mask_bbox",
    "masks_from_codes",
    "threshold",
]

#: Thresholds of the density: whole tumor (FLAIR) and tumor core (T1Gd).
FLAIR_LEVEL, T1GD_LEVEL = 0.2, 0.6
SCALE = 250
FLAIR_CODE, T1GD_CODE = 50, 150


def encode(u: np.ndarray) -> np.ndarray:
    """uint8 codes of a density in [0, 1] that keep the 0.2 and 0.6 thresholds exact.

    ``q = floor(250 u)``, then nudged across a threshold code where rounding put it on the
    wrong side, so that ``q >= 50`` iff ``u >= 0.2`` and ``q >= 150`` iff ``u >= 0.6``.
    """
    u = np.ascontiguousarray(u, dtype=np.float32)
    return _encode(u.ravel()).reshape(u.shape)


@numba.njit(cache=True)
def _encode(u):
    out = np.empty(u.shape[0], np.uint8)
    f, t = np.float32(FLAIR_LEVEL), np.float32(T1GD_LEVEL)
    for n in range(u.shape[0]):
        v = u[n]
        q = int(np.floor(np.float64(v) * SCALE))
        q = min(max(q, 0), SCALE)
        if v >= f:
            q = max(q, FLAIR_CODE)
        else:
            q = min(q, FLAIR_CODE - 1)
        if v >= t:
            q = max(q, T1GD_CODE)
        else:
            q = min(q, T1GD_CODE - 1)
        out[n] = q
    return out


def encode_reference(u: np.ndarray) -> np.ndarray:
    """:func:`encode` in plain NumPy (the numba kernel is tested equal to it)."""
    u = np.asarray(u, dtype=np.float32)
    q = np.clip(np.floor(u.astype(np.float64) * SCALE), 0, SCALE).astype(np.int64)
    q = np.where(
        u >= np.float32(FLAIR_LEVEL), np.maximum(q, FLAIR_CODE), np.minimum(q, FLAIR_CODE - 1)
    )
    q = np.where(
        u >= np.float32(T1GD_LEVEL), np.maximum(q, T1GD_CODE), np.minimum(q, T1GD_CODE - 1)
    )
    return q.astype(np.uint8)


def decode(q: np.ndarray) -> np.ndarray:
    """Approximate density (float32) from codes; exact on the 0.2 / 0.6 thresholds."""
    q = np.asarray(q)
    u = (q.astype(np.float32) + np.float32(0.5)) / np.float32(SCALE)
    u = np.where(q == 0, np.float32(0), u)
    return np.minimum(u, np.float32(1)).astype(np.float32)


def masks_from_codes(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FLAIR, T1Gd) boolean masks (u >= 0.2, u >= 0.6) from codes."""
    return q >= FLAIR_CODE, q >= T1GD_CODE


def threshold(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The visible tumor of a density: (FLAIR, T1Gd) = (u >= 0.2, u >= 0.6).

    Parameters
    ----------
    u : ndarray
        Tumor-cell density in [0, 1].

    Returns
    -------
    flair, t1gd : ndarray of bool
        The whole tumor (FLAIR hyperintensity) and the core (T1Gd enhancement).

    Examples
    --------
    >>> flair, t1gd = threshold(np.array([0.1, 0.2, 0.59, 0.6]))
    >>> flair.tolist(), t1gd.tolist()
    ([False, True, True, True], [False, False, False, True])
    """
    u = np.asarray(u)
    return u >= FLAIR_LEVEL, u >= T1GD_LEVEL


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty).

    Examples
    --------
    >>> import numpy as np
    >>> dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise GliomatchError(f"masks of different shapes {a.shape} and {b.shape}")
    return dice_from_counts(np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b))


def dice_from_counts(inter, na, nb):
    """Dice from intersection and sizes; the one formula every strategy uses (same rounding)."""
    na, nb = int(na), int(nb)
    if na + nb == 0:
        return 1.0
    return 2.0 * int(inter) / (na + nb)


def dice_scores(inter_f, inter_t, nf, nt, qf, qt, w_t1gd, w_flair) -> np.ndarray:
    """Combined scores from intersections and sizes (the formula every strategy shares)."""
    inter_f = np.asarray(inter_f, dtype=np.float64)
    inter_t = np.asarray(inter_t, dtype=np.float64)
    den_f = np.asarray(nf, dtype=np.float64) + float(qf)
    den_t = np.asarray(nt, dtype=np.float64) + float(qt)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_f = np.where(den_f == 0, 1.0, 2.0 * inter_f / den_f)
        d_t = np.where(den_t == 0, 1.0, 2.0 * inter_t / den_t)
    return w_t1gd * d_t + w_flair * d_f, d_t, d_f


def mask_bbox(mask: np.ndarray) -> np.ndarray:
    """Half-open bounding box ``(i0, j0, k0, i1, j1, k1)`` of a mask (zeros when empty)."""
    if not mask.any():
        return np.zeros(6, dtype=np.int32)
    out = []
    for ax in range(3):
        nz = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        out.append((nz[0], nz[-1] + 1))
    return np.array(
        [out[0][0], out[1][0], out[2][0], out[0][1], out[1][1], out[2][1]], dtype=np.int32
    )


def downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """Order-0 (nearest-neighbour) zoom of a boolean mask to ``size`` voxels per side."""
    if mask.shape[0] == size:
        return np.asarray(mask, dtype=bool)
    factor = size / mask.shape[0]
    out = ndimage.zoom(mask.astype(np.uint8), factor, order=0)
    return out.astype(bool)
