"""Plain NumPy reference of the solver's discretisation (obviously correct, slow).

Used by the tests to check the numba kernel and by ``gliomatch bench solver`` as the baseline.
It updates the whole padded grid every step, like a roll-based solver would.
"""

from __future__ import annotations

import numpy as np

from gliomatch.solver.kernels import FLUSH_BELOW

__all__ = ["step_reference"]


def step_reference(u, fx, fy, fz, s, growth):
    """One step on the whole padded grid; returns the new field (same dtype as ``u``).

    The padding ring (non-tissue, zero face coefficients) stays zero.
    """
    c = u[1:-1, 1:-1, 1:-1]
    lap = (
        fx[2:, 1:-1, 1:-1] * (u[2:, 1:-1, 1:-1] - c)
        + fx[1:-1, 1:-1, 1:-1] * (u[:-2, 1:-1, 1:-1] - c)
        + fy[1:-1, 2:, 1:-1] * (u[1:-1, 2:, 1:-1] - c)
        + fy[1:-1, 1:-1, 1:-1] * (u[1:-1, :-2, 1:-1] - c)
        + fz[1:-1, 1:-1, 2:] * (u[1:-1, 1:-1, 2:] - c)
        + fz[1:-1, 1:-1, 1:-1] * (u[1:-1, 1:-1, :-2] - c)
    )
    v = c + u.dtype.type(s) * lap
    v = v * u.dtype.type(growth) / (1 + v * u.dtype.type(growth - 1.0))
    v[v <= FLUSH_BELOW] = 0
    out = np.zeros_like(u)
    out[1:-1, 1:-1, 1:-1] = v
    return out
