"""Fisher–Kolmogorov tumor growth: ``du/dt = div(D grad u) + rho u (1 - u)`` in brain tissue.

Units are millimetres and days: D_w in mm^2/day, rho in 1/day, times in days. The seed position
is given as fractions of the grid extent per axis (0 = first voxel centre, 1 = last).

Time stepping (shared by the fast and the reference path, so they agree to round-off):

* the main trajectory takes equal steps ``dt = min(cfl * h^2 / (6 D_max), reaction_cfl / rho)``
  (the explicit diffusion stability limit and a bound on the splitting error of the reaction);
* each step is a 7-point finite-volume diffusion update followed by the *exact* logistic solution
  over ``dt`` (Lie splitting), so the reaction never overshoots 1;
* a snapshot at time ``t`` is one extra, shorter step from the last grid time ``n dt <= t`` taken
  on a copy, so the trajectory is the same whichever snapshots are asked for: the snapshot at
  ``t`` equals a separate run to ``t``.

References
----------
.. [1] Fisher, R. A. (1937). The wave of advance of advantageous genes. Ann. Eugen. 7, 355-369.
.. [2] Swanson, K. R. et al. (2000). A quantitative model for differential motility of gliomas
   in grey and white matter. Cell Prolif. 33, 317-329.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError
from gliomatch.solver.domain import Domain
from gliomatch.solver.kernels import empty_rows, grow_box, step_box
from gliomatch.solver.reference import step_reference

__all__ = ["Simulation", "TumorParams", "simulate", "time_step"]

#: Identifies the discretisation; databases record it, and a resumed build must match it.
SCHEME = "fk-fv7-explicit-exactlogistic-v1"
#: Cells with u > ACTIVE_EPS bound the active region of the fast solver.
ACTIVE_EPS = 1e-8
DEFAULT_SEED_SIGMA_MM = 1.5


@dataclass(frozen=True)
class TumorParams:
    """theta = (x, y, z, D_w, rho, T_end): seed (grid fractions), mm^2/day, 1/day, days."""

    x: float
    y: float
    z: float
    dw: float
    rho: float
    t_end: float

    def __post_init__(self):
        _check_params(self.x, self.y, self.z, self.dw, self.rho, [self.t_end])


@dataclass
class Simulation:
    """Result of :func:`simulate`.

    Attributes
    ----------
    times : list of float
        Snapshot times (days) actually reached, ascending.
    densities : list of ndarray of float32
        Cell density in [0, 1] on the unpadded grid, one per time.
    stopped_early : bool
        True when the run stopped because the tumor exceeded ``stop_volume_cm3``.
    """

    times: list[float]
    densities: list[np.ndarray]
    dt: float
    steps: int
    stopped_early: bool
    seed_voxel: np.ndarray
    seed_mm: np.ndarray
    elapsed_s: float
    info: dict = field(default_factory=dict)


def _check_params(x, y, z, dw, rho, times):
    for name, v in (("x", x), ("y", y), ("z", z)):
        if not np.isfinite(v):
            raise GliomatchError(f"seed {name} is {v}; it must be a finite fraction in [0, 1]")
        if not 0.0 <= v <= 1.0:
            raise GliomatchError(
                f"seed {name} = {v} is outside [0, 1] (it is a fraction of the grid extent)"
            )
    for name, v, unit in (("D_w", dw, "mm^2/day"), ("rho", rho, "1/day")):
        if not np.isfinite(v):
            raise GliomatchError(f"{name} is {v}; it must be a finite number in {unit}")
        if v < 0:
            raise GliomatchError(f"{name} = {v} {unit} is negative")
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.size == 0:
        raise GliomatchError("no snapshot time given")
    if not np.all(np.isfinite(times)):
        raise GliomatchError(f"snapshot times must be finite, got {times.tolist()}")
    if np.any(times < 0):
        raise GliomatchError(f"snapshot times must be >= 0 days, got {times.tolist()}")
    return np.unique(times)


def time_step(
    domain: Domain, dw: float, rho: float, *, cfl: float = 0.9, reaction_cfl: float = 0.25
) -> float:
    """The solver's step (days): diffusion stability limit and reaction accuracy limit."""
    dmax = dw * domain.max_face
    dt = math.inf
    if dmax > 0:
        dt = cfl * domain.spacing**2 / (6.0 * dmax)
    if rho > 0:
        dt = min(dt, reaction_cfl / rho)
    if not math.isfinite(dt):
        dt = 1.0  # nothing evolves; any step is exact
    return float(dt)


def _seed_field(domain: Domain, frac, sigma_mm: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(domain.shape)
    p = np.asarray(frac, dtype=np.float64) * (shape - 1)
    nearest = np.rint(p).astype(int)
    if not domain.tissue[tuple(nearest + 1)]:
        raise GliomatchError(
            f"seed ({', '.join(f'{f:.3f}' for f in frac)}) lies at voxel {nearest.tolist()}, "
            "which is not brain tissue (WM + GM < 0.5); choose a seed inside white or grey matter"
        )
    u = np.zeros(domain.tissue.shape, dtype=dtype)
    if sigma_mm <= 0:
        u[tuple(nearest + 1)] = 1.0
        return u, p
    r = int(math.ceil(3.0 * sigma_mm / domain.spacing))
    lo = np.maximum(nearest - r, 0)
    hi = np.minimum(nearest + r + 1, shape)
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    d2 = sum((g - pc) ** 2 for g, pc in zip(grids, p, strict=True)) * domain.spacing**2
    g = np.exp(-d2 / (2.0 * sigma_mm**2))
    sl = tuple(slice(a + 1, b + 1) for a, b in zip(lo, hi, strict=True))
    g = np.where(domain.tissue[sl], g, 0.0)
    g /= g.max()
    g[g < ACTIVE_EPS] = 0.0
    u[sl] = g
    return u, p


class _FastStepper:
    """Numba stepping restricted to the growing box where u > ACTIVE_EPS."""

    def __init__(self, domain: Domain, u0: np.ndarray, thr: float):
        self.d = domain
        self.u = u0.copy()
        self.buf = u0.copy()
        self.thr = thr
        n = np.asarray(u0.shape)
        self.lim_lo = np.ones(3, dtype=np.int64)
        self.lim_hi = n.astype(np.int64) - 1
        idx = np.argwhere(u0 > ACTIVE_EPS)
        self.lo = np.maximum(idx.min(0) - 1, self.lim_lo).astype(np.int64)
        self.hi = np.minimum(idx.max(0) + 2, self.lim_hi).astype(np.int64)
        self.rows = empty_rows(u0.shape[0])

    def _run(self, out, s, growth):
        d = self.d
        step_box(
            self.u, out, d.fx, d.fy, d.fz, d.span, s, growth, self.lo, self.hi, self.thr, self.rows
        )
        return int(self.rows[self.lo[0] : self.hi[0]].sum())

    def step(self, s, growth) -> int:
        count = self._run(self.buf, s, growth)
        self.u, self.buf = self.buf, self.u
        self._grow()
        return count

    def _grow(self):
        # The box never shrinks, so cells outside it were never updated and hold the same
        # (sub-ACTIVE_EPS) value in both buffers.
        grow_box(self.u, self.lo, self.hi, self.lim_lo, self.lim_hi, ACTIVE_EPS)

    def peek(self, s, growth) -> tuple[np.ndarray, int]:
        out = self.u.copy()
        count = self._run(out, s, growth)
        return out, count

    def current(self) -> tuple[np.ndarray, int]:
        return self.u, int(np.count_nonzero(self.u >= self.thr))


class _ReferenceStepper:
    """Whole-grid NumPy stepping (:func:`step_reference`)."""

    def __init__(self, domain: Domain, u0: np.ndarray, thr: float):
        self.d, self.u, self.thr = domain, u0.copy(), thr

    def step(self, s, growth) -> int:
        self.u = step_reference(self.u, self.d.fx, self.d.fy, self.d.fz, s, growth)
        return int(np.count_nonzero(self.u >= self.thr))

    def peek(self, s, growth):
        out = step_reference(self.u, self.d.fx, self.d.fy, self.d.fz, s, growth)
        return out, int(np.count_nonzero(out >= self.thr))

    def current(self):
        return self.u, int(np.count_nonzero(self.u >= self.thr))


def simulate(
    space: Atlas | Domain,
    x: float,
    y: float,
    z: float,
    dw: float,
    rho: float,
    times,
    *,
    ratio: float = 10.0,
    method: str = "fast",
    seed_sigma_mm: float = DEFAULT_SEED_SIGMA_MM,
    stop_volume_cm3: float | None = None,
    stop_threshold: float = 0.2,
    cfl: float = 0.9,
    reaction_cfl: float = 0.25,
    u0: np.ndarray | None = None,
) -> Simulation:
    """Simulate tumor growth from a seed and return the density at each of ``times``.

    Parameters
    ----------
    space : Atlas or Domain
        Where the tumor grows. Pass a :class:`Domain` to reuse it across many runs.
    x, y, z : float
        Seed position as fractions of the grid extent, in [0, 1].
    dw : float
        White-matter diffusivity D_w (mm^2/day); grey matter gets ``dw / ratio``.
    rho : float
        Proliferation rate (1/day).
    times : float or sequence of float
        Snapshot times in days (any order; duplicates are merged).
    ratio : float
        D_WM / D_GM (used only when ``space`` is an Atlas).
    method : {"fast", "reference"}
        Numba kernels on the active region, or the whole-grid NumPy reference.
    seed_sigma_mm : float
        Width of the Gaussian seed (peak 1); 0 gives a single-voxel seed.
    stop_volume_cm3 : float, optional
        Stop early once the volume with ``u >= stop_threshold`` exceeds this; later snapshots
        are then not returned.
    u0 : ndarray, optional
        Initial density on the unpadded grid instead of a seed (x, y, z are then only reported).

    Returns
    -------
    Simulation

    Raises
    ------
    GliomatchError
        Seed outside brain tissue, negative or non-finite D_w, rho or times, unknown method.
    """
    t_start = time.perf_counter()
    targets = _check_params(x, y, z, dw, rho, np.atleast_1d(times))
    if method not in ("fast", "reference"):
        raise GliomatchError(f"unknown solver method {method!r}; use 'fast' or 'reference'")
    domain = Domain.from_atlas(space, ratio=ratio) if isinstance(space, Atlas) else space
    dtype = np.float32
    if u0 is None:
        u, p = _seed_field(domain, (x, y, z), seed_sigma_mm, dtype)
    else:
        u0 = np.asarray(u0)
        if u0.shape != domain.shape:
            raise GliomatchError(f"u0 has shape {u0.shape}, expected {domain.shape}")
        if not np.all(np.isfinite(u0)) or u0.min() < 0 or u0.max() > 1:
            raise GliomatchError("u0 must be finite and within [0, 1]")
        u = np.pad(u0.astype(dtype), 1) * domain.tissue
        p = np.asarray((x, y, z)) * (np.asarray(domain.shape) - 1)
    if not np.any(u > ACTIVE_EPS):
        raise GliomatchError("initial density is zero everywhere in tissue")

    dt = time_step(domain, dw, rho, cfl=cfl, reaction_cfl=reaction_cfl)
    h2 = domain.spacing**2
    stop_voxels = math.inf
    if stop_volume_cm3 is not None:
        stop_voxels = stop_volume_cm3 * 1000.0 / domain.spacing**3
    stepper_cls = _FastStepper if method == "fast" else _ReferenceStepper
    stepper = stepper_cls(domain, u, stop_threshold)

    def coeffs(h):
        return dw * h / h2, math.exp(rho * h)

    s_full, g_full = coeffs(dt)
    out_t, out_u = [], []
    n = 0
    stopped = False
    for t_target in targets:
        n_target = int(math.floor(t_target / dt + 1e-9))
        while n < n_target:
            count = stepper.step(s_full, g_full)
            n += 1
            if count > stop_voxels:
                stopped = True
                break
        if stopped:
            break
        rem = t_target - n * dt
        if rem > 1e-9 * max(dt, 1.0):
            snap, count = stepper.peek(*coeffs(rem))
        else:
            snap, count = stepper.current()
        out_t.append(float(t_target))
        out_u.append(np.ascontiguousarray(snap[1:-1, 1:-1, 1:-1], dtype=np.float32))
        if count > stop_voxels:
            stopped = t_target != targets[-1]
            break

    seed_mm = p @ domain.affine[:3, :3].T + domain.affine[:3, 3]
    return Simulation(
        times=out_t,
        densities=out_u,
        dt=dt,
        steps=n,
        stopped_early=stopped,
        seed_voxel=p,
        seed_mm=seed_mm,
        elapsed_s=time.perf_counter() - t_start,
        info={"method": method, "ratio": domain.ratio, "spacing_mm": domain.spacing},
    )
