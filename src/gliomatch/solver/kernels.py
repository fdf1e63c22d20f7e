"""Numba kernel: one explicit Fisher–Kolmogorov step restricted to a box.

The same discretisation as :func:`gliomatch.solver.reference.step_reference` (a test compares
them): a 7-point finite-volume diffusion update with face coefficients, followed by the exact
solution of the logistic reaction over the step (Lie splitting). Densities below
``FLUSH_BELOW`` are flushed to zero in both.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["FLUSH_BELOW", "step_box"]

#: Densities below this are set to 0 (avoids float32 denormals, which are ~100x slower).
FLUSH_BELOW = 1e-30


_JIT = dict(fastmath=True, cache=True, boundscheck=False, error_model="numpy")


@numba.njit(**_JIT)
def _react(v, g, gm1):
    """Exact logistic growth over one step, then flush to zero (no slow denormals)."""
    v = v * g / (np.float32(1.0) + v * gm1)
    return v if v > np.float32(FLUSH_BELOW) else np.float32(0.0)


@numba.njit(**_JIT)
def _plane(u, out, fx, fy, fz, span, s, g, i, lo, hi, thr):
    """Update plane ``i`` of the box; returns the number of cells with ``out >= thr``.

    Faces on the box boundary are closed (no flux), so the box conserves mass exactly; outside
    the box u <= ACTIVE_EPS and the box grows before that matters.

    A separate serial function: numba vectorises its inner loop, which it does not do for
    loops nested inside a ``prange`` body. Rows are sliced to ``[k0, k1)`` so that the loop
    index starts at 0 (no negative-index wrap-around checks, which also block vectorisation).
    """
    gm1 = g - np.float32(1.0)
    cnt = 0
    for j in range(lo[1], hi[1]):
        k0 = max(lo[2], span[i, j, 0])
        k1 = min(hi[2], span[i, j, 1])
        if k1 <= k0:
            continue
        uc = u[i, j, k0 - 1 : k1 + 1]  # with one neighbour on each side
        mid = u[i, j, k0:k1]
        # a neighbour row outside the box is replaced by the row itself: zero flux
        up = u[i + 1, j, k0:k1] if i + 1 < hi[0] else mid
        um = u[i - 1, j, k0:k1] if i - 1 >= lo[0] else mid
        ujp = u[i, j + 1, k0:k1] if j + 1 < hi[1] else mid
        ujm = u[i, j - 1, k0:k1] if j - 1 >= lo[1] else mid
        fxp, fxc = fx[i + 1, j, k0:k1], fx[i, j, k0:k1]
        fyp, fyc = fy[i, j + 1, k0:k1], fy[i, j, k0:k1]
        fzc = fz[i, j, k0 : k1 + 1]
        o = out[i, j, k0:k1]
        n = k1 - k0
        for k in range(n):
            c = uc[k + 1]
            lap = (
                fxp[k] * (up[k] - c)
                + fxc[k] * (um[k] - c)
                + fyp[k] * (ujp[k] - c)
                + fyc[k] * (ujm[k] - c)
                + fzc[k + 1] * (uc[k + 2] - c)
                + fzc[k] * (uc[k] - c)
            )
            o[k] = _react(c + s * lap, g, gm1)
        # close the z faces on the box boundary (only where the box cuts a tissue row)
        xy = (up, um, ujp, ujm, fxp, fxc, fyp, fyc)
        close_lo, close_hi = k0 == lo[2], k1 == hi[2]
        if close_lo:
            lap = _lap_z_closed(xy, fzc, uc, 0, True, close_hi and n == 1)
            o[0] = _react(uc[1] + s * lap, g, gm1)
        if close_hi and (n > 1 or not close_lo):
            lap = _lap_z_closed(xy, fzc, uc, n - 1, close_lo and n == 1, True)
            o[n - 1] = _react(uc[n] + s * lap, g, gm1)
        for k in range(n):
            cnt += o[k] >= thr
    return cnt


@numba.njit(**_JIT)
def _lap_z_closed(xy, fzc, uc, k, close_lo, close_hi):
    """The 7-point flux sum at row position ``k`` with the low and/or high z face closed."""
    up, um, ujp, ujm, fxp, fxc, fyp, fyc = xy
    c = uc[k + 1]
    lap = (
        fxp[k] * (up[k] - c) + fxc[k] * (um[k] - c) + fyp[k] * (ujp[k] - c) + fyc[k] * (ujm[k] - c)
    )
    if not close_lo:
        lap += fzc[k] * (uc[k] - c)
    if not close_hi:
        lap += fzc[k + 1] * (uc[k + 2] - c)
    return lap


@numba.njit(parallel=True, cache=True)
def step_box(u, out, fx, fy, fz, span, s, growth, lo, hi, thr, row_count):
    """Advance ``u`` by one step inside the box ``[lo, hi)`` and write the result to ``out``.

    Parameters
    ----------
    u, out : float32 arrays (padded grid)
    fx, fy, fz : float32 face coefficients relative to D_w (see :class:`Domain`)
    span : int64 array (n0, n1, 2)
        Per row ``(i, j)``: the range ``[k0, k1)`` holding all its tissue cells; the rest of the
        row is never touched (it stays 0).
    s : float
        ``D_w * dt / h**2``.
    growth : float
        ``exp(rho * dt)``; the logistic step is ``v * g / (1 + v * (g - 1))``.
    lo, hi : int64 arrays of 3
        Box to update (inclusive, exclusive), inside the padding.
    thr : float
        Cells with ``out >= thr`` are counted (early stop on tumor volume).
    row_count : int64 array (n0,)
        Per plane ``i``: number of cells with ``out >= thr``.
    """
    s32 = np.float32(s)
    g32 = np.float32(growth)
    t32 = np.float32(thr)
    for i in numba.prange(lo[0], hi[0]):
        row_count[i] = _plane(u, out, fx, fy, fz, span, s32, g32, i, lo, hi, t32)


@numba.njit(cache=True)
def _layer_active(u, lo, hi, ax, idx, eps):
    """True when the layer ``idx`` along axis ``ax`` of the box holds a value > ``eps``."""
    r = [(lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])]
    r[ax] = (idx, idx + 1)
    for i in range(r[0][0], r[0][1]):
        for j in range(r[1][0], r[1][1]):
            for k in range(r[2][0], r[2][1]):
                if u[i, j, k] > eps:
                    return True
    return False


@numba.njit(cache=True)
def grow_box(u, lo, hi, lim_lo, lim_hi, eps):
    """Grow ``[lo, hi)`` in place by one on each side whose outermost layer holds u > ``eps``."""
    for ax in range(3):
        grow_lo = lo[ax] > lim_lo[ax] and _layer_active(u, lo, hi, ax, lo[ax], eps)
        grow_hi = hi[ax] < lim_hi[ax] and _layer_active(u, lo, hi, ax, hi[ax] - 1, eps)
        if grow_lo:
            lo[ax] -= 1
        if grow_hi:
            hi[ax] += 1


def empty_rows(n0: int) -> np.ndarray:
    """Per-plane counter for :func:`step_box` on a padded grid with ``n0`` planes."""
    return np.zeros(n0, dtype=np.int64)
