"""Numba kernels: one stage of the explicit Fisher–Kolmogorov update, restricted to a box.

A stage computes ``out = a * y1 + b * y2 + c * lap(y1)`` where ``lap`` is the 7-point
finite-volume flux sum with face coefficients (relative to D_w; ``c`` carries
``D_w * dt / h^2``), then applies the exact logistic growth ``v g / (1 + v (g - 1))`` (``g = 1``
on intermediate stages). Forward Euler is the one-stage case ``a = 1, b = 0``; the RKL1
super-time-stepping stages of :mod:`gliomatch.solver.core` use ``b != 0``. Values with
``|v| <= FLUSH_BELOW`` are flushed to zero (float32 denormals are ~100x slower).

:func:`gliomatch.solver.reference.stage_reference` is the same computation in plain NumPy on
the whole grid; the tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FLUSH_BELOW", "empty_rows", "grow_box", "grow_from_flags", "stage_box"]

#: Densities with magnitude below this are set to 0.
FLUSH_BELOW = 1e-30

_JIT = dict(fastmath=True, cache=True, boundscheck=False, error_model="numpy")


@numba.njit(**_JIT)
def _finish(v, g, gm1):
    """Exact logistic growth over the step, then flush to zero."""
    v = v * g / (np.float32(1.0) + v * gm1)
    return v if abs(v) > np.float32(FLUSH_BELOW) else np.float32(0.0)


@numba.njit(**_JIT)
def _plane(y1, y2, out, fx, fy, fz, span, a, b, c, g, i, lo, hi, thr, eps, flags):
    """Update plane ``i`` of the box; returns the number of cells with ``out >= thr``.

    ``flags[i, :]`` records which outer layers of the box this plane touches with
    ``|out| > eps`` (low/high i, j, k), so the box can grow without another pass.

    Faces on the box boundary are closed (no flux), so the box conserves mass exactly; outside
    the box |u| <= ACTIVE_EPS and the box grows before that matters.

    A separate serial function: numba vectorises its inner loop, which it does not do for
    loops nested inside a ``prange`` body. Rows are sliced to ``[k0, k1)`` so that the loop
    index starts at 0 (no negative-index wrap-around checks, which also block vectorisation).
    """
    gm1 = g - np.float32(1.0)
    cnt = 0
    edge_i = i == lo[0] or i == hi[0] - 1
    for f in range(6):
        flags[i, f] = False
    for j in range(lo[1], hi[1]):
        k0 = max(lo[2], span[i, j, 0])
        k1 = min(hi[2], span[i, j, 1])
        if k1 <= k0:
            continue
        uc = y1[i, j, k0 - 1 : k1 + 1]  # with one neighbour on each side
        mid = y1[i, j, k0:k1]
        # a neighbour row outside the box is replaced by the row itself: zero flux
        up = y1[i + 1, j, k0:k1] if i + 1 < hi[0] else mid
        um = y1[i - 1, j, k0:k1] if i - 1 >= lo[0] else mid
        ujp = y1[i, j + 1, k0:k1] if j + 1 < hi[1] else mid
        ujm = y1[i, j - 1, k0:k1] if j - 1 >= lo[1] else mid
        fxp, fxc = fx[i + 1, j, k0:k1], fx[i, j, k0:k1]
        fyp, fyc = fy[i, j + 1, k0:k1], fy[i, j, k0:k1]
        fzc = fz[i, j, k0 : k1 + 1]
        old = y2[i, j, k0:k1]
        o = out[i, j, k0:k1]
        n = k1 - k0
        for k in range(n):
            cc = uc[k + 1]
            lap = (
                fxp[k] * (up[k] - cc)
                + fxc[k] * (um[k] - cc)
                + fyp[k] * (ujp[k] - cc)
                + fyc[k] * (ujm[k] - cc)
                + fzc[k + 1] * (uc[k + 2] - cc)
                + fzc[k] * (uc[k] - cc)
            )
            o[k] = _finish(a * cc + b * old[k] + c * lap, g, gm1)
        # close the z faces on the box boundary (only where the box cuts a tissue row)
        xy = (up, um, ujp, ujm, fxp, fxc, fyp, fyc)
        close_lo, close_hi = k0 == lo[2], k1 == hi[2]
        if close_lo:
            lap = _lap_z_closed(xy, fzc, uc, 0, True, close_hi and n == 1)
            o[0] = _finish(a * uc[1] + b * old[0] + c * lap, g, gm1)
        if close_hi and (n > 1 or not close_lo):
            lap = _lap_z_closed(xy, fzc, uc, n - 1, close_lo and n == 1, True)
            o[n - 1] = _finish(a * uc[n] + b * old[n - 1] + c * lap, g, gm1)
        for k in range(n):
            cnt += o[k] >= thr
        if close_lo and abs(o[0]) > eps:
            flags[i, 4] = True
        if close_hi and abs(o[n - 1]) > eps:
            flags[i, 5] = True
        edge_j = j == lo[1] or j == hi[1] - 1
        if edge_i or edge_j:
            m = np.float32(0.0)
            for k in range(n):
                m = max(m, abs(o[k]))
            if m > eps:
                if i == lo[0]:
                    flags[i, 0] = True
                if i == hi[0] - 1:
                    flags[i, 1] = True
                if j == lo[1]:
                    flags[i, 2] = True
                if j == hi[1] - 1:
                    flags[i, 3] = True
    return cnt


@numba.njit(**_JIT)
def _lap_z_closed(xy, fzc, uc, k, close_lo, close_hi):
    """The 7-point flux sum at row position ``k`` with the low and/or high z face closed."""
    up, um, ujp, ujm, fxp, fxc, fyp, fyc = xy
    c = uc[k + 1]
    lap = fxp[k] * (up[k] - c) + fxc[k] * (um[k] - c) + fyp[k] * (ujp[k] - c)
    lap += fyc[k] * (ujm[k] - c)
    if not close_lo:
        lap += fzc[k] * (uc[k] - c)
    if not close_hi:
        lap += fzc[k + 1] * (uc[k + 2] - c)
    return lap


@numba.njit(parallel=True, cache=True)
def stage_box(y1, y2, out, fx, fy, fz, span, a, b, c, growth, lo, hi, thr, row_count, eps, flags):
    """One stage ``out = finish(a y1 + b y2 + c lap(y1))`` inside the box ``[lo, hi)``.

    Parameters
    ----------
    y1, y2, out : float32 arrays (padded grid)
        ``y2`` is only read where ``b != 0`` matters (pass ``y1`` for Euler).
    fx, fy, fz : float32 face coefficients relative to D_w (see :class:`Domain`)
    span : int64 array (n0, n1, 2)
        Per row ``(i, j)``: the range ``[k0, k1)`` holding all its tissue cells; the rest of the
        row is never touched (it stays 0).
    a, b, c : float
        Stage coefficients; ``c`` includes ``D_w * dt / h**2``.
    growth : float
        ``exp(rho * dt)`` on the last stage of a step, else 1.
    lo, hi : int64 arrays of 3
        Box to update (inclusive, exclusive), inside the padding.
    thr : float
        Cells with ``out >= thr`` are counted per plane into ``row_count``.
    eps, flags : float, bool array (n0, 6)
        Per plane, whether ``|out| > eps`` on the box's low/high i, j, k layers
        (see :func:`grow_from_flags`).
    """
    a32, b32, c32 = np.float32(a), np.float32(b), np.float32(c)
    g32, t32 = np.float32(growth), np.float32(thr)
    e32 = np.float32(eps)
    for i in numba.prange(lo[0], hi[0]):
        row_count[i] = _plane(
            y1, y2, out, fx, fy, fz, span, a32, b32, c32, g32, i, lo, hi, t32, e32, flags
        )


def grow_from_flags(flags, lo, hi, lim_lo, lim_hi) -> None:
    """Grow ``[lo, hi)`` in place by one on each side whose outer layer was flagged."""
    hit = flags[lo[0] : hi[0]].any(axis=0)
    for ax in range(3):
        if hit[2 * ax] and lo[ax] > lim_lo[ax]:
            lo[ax] -= 1
        if hit[2 * ax + 1] and hi[ax] < lim_hi[ax]:
            hi[ax] += 1


@numba.njit(cache=True)
def _layer_active(u, lo, hi, ax, idx, eps):
    """True when the layer ``idx`` along axis ``ax`` of the box holds |u| > ``eps``."""
    r = [(lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])]
    r[ax] = (idx, idx + 1)
    for i in range(r[0][0], r[0][1]):
        for j in range(r[1][0], r[1][1]):
            for k in range(r[2][0], r[2][1]):
                if abs(u[i, j, k]) > eps:
                    return True
    return False


@numba.njit(cache=True)
def grow_box(u, lo, hi, lim_lo, lim_hi, eps):
    """Grow ``[lo, hi)`` in place by one on each side whose outermost layer holds |u| > eps."""
    for ax in range(3):
        grow_lo = lo[ax] > lim_lo[ax] and _layer_active(u, lo, hi, ax, lo[ax], eps)
        grow_hi = hi[ax] < lim_hi[ax] and _layer_active(u, lo, hi, ax, hi[ax] - 1, eps)
        if grow_lo:
            lo[ax] -= 1
        if grow_hi:
            hi[ax] += 1


def empty_rows(n0: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-plane counters and layer flags for :func:`stage_box` (``n0`` padded planes)."""
    return np.zeros(n0, dtype=np.int64), np.zeros((n0, 6), dtype=np.bool_)
