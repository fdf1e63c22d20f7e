"""Plain NumPy reference of the solver's discretisation (obviously correct, slow).

Used by the tests to check the numba kernels and by ``gliomatch bench solver`` as the baseline.
It updates the whole padded grid every stage, like a roll-based solver would.
"""

from __future__ import annotations

import numpy as np

from gliomatch.solver.kernels import FLUSH_BELOW

__all__ = ["stage_reference"]


def stage_reference(y1, y2, fx, fy, fz, a, b, c, growth):
    """One stage ``finish(a y1 + b y2 + c lap(y1))`` on the whole padded grid (new array).

    ``finish`` is the exact logistic growth by ``growth = exp(rho dt)`` followed by flushing
    ``|v| <= FLUSH_BELOW`` to zero. The padding ring (non-tissue, zero faces) stays zero.
    """
    t = y1.dtype.type
    c0 = y1[1:-1, 1:-1, 1:-1]
    lap = (
        fx[2:, 1:-1, 1:-1] * (y1[2:, 1:-1, 1:-1] - c0)
        + fx[1:-1, 1:-1, 1:-1] * (y1[:-2, 1:-1, 1:-1] - c0)
        + fy[1:-1, 2:, 1:-1] * (y1[1:-1, 2:, 1:-1] - c0)
        + fy[1:-1, 1:-1, 1:-1] * (y1[1:-1, :-2, 1:-1] - c0)
        + fz[1:-1, 1:-1, 2:] * (y1[1:-1, 1:-1, 2:] - c0)
        + fz[1:-1, 1:-1, 1:-1] * (y1[1:-1, 1:-1, :-2] - c0)
    )
    v = t(a) * c0 + t(b) * y2[1:-1, 1:-1, 1:-1] + t(c) * lap
    v = v * t(growth) / (1 + v * t(growth - 1.0))
    v[np.abs(v) <= FLUSH_BELOW] = 0
    out = np.zeros_like(y1)
    out[1:-1, 1:-1, 1:-1] = v
    return out
