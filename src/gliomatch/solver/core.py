"""Fisher–Kolmogorov tumor growth: ``du/dt = div(D grad u) + rho u (1 - u)`` in brain tissue.

Units are millimetres and days: D_w in mm^2/day, rho in 1/day, times in days. The seed position
is given as fractions of the grid extent per axis (0 = first voxel centre, 1 = last).

Time stepping (shared by the fast and the reference path, so they agree to round-off):

* diffusion is the 7-point finite-volume operator ``L`` with harmonic face diffusivities; its
  forward-Euler stability limit is ``dt_E = h^2 / (6 D_max)`` (times ``cfl``);
* ``stepping="rkl1"`` (default) advances the diffusion over a step ``dt`` with the explicit
  first-order Runge–Kutta–Legendre super-time-stepping scheme (RKL1, Meyer, Balsara & Aslam
  2014): ``s`` stages of ``L`` are stable for ``dt <= dt_E (s^2 + s) / 2``, so a long step costs
  about ``sqrt(2 dt / dt_E)`` evaluations instead of ``dt / dt_E``. The step is limited by the
  reaction, ``dt <= reaction_cfl / rho``. Every stage conserves mass. ``stepping="euler"`` is the
  plain forward-Euler scheme (one stage, ``dt <= dt_E``);
* each step ends with the *exact* solution of the logistic reaction over ``dt`` (Lie
  splitting), so the reaction never overshoots 1;
* a snapshot at time ``t`` is one extra, shorter step from the last grid time ``n dt <= t`` taken
  on a copy, so the trajectory is the same whichever snapshots are asked for: the snapshot at
  ``t`` equals a separate run to ``t``.

References
----------
.. [1] Fisher, R. A. (1937). The wave of advance of advantageous genes. Ann. Eugen. 7, 355-369.
.. [2] Swanson, K. R. et al. (2000). A quantitative model for differential motility of gliomas
   in grey and white matter. Cell Prolif. 33, 317-329.
.. [3] Meyer, C. D., Balsara, D. S. & Aslam, T. D. (2014). A stabilized Runge–Kutta–Legendre
   method for explicit super-time-stepping of parabolic and mixed equations. J. Comput. Phys.
   257, 594-626.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from nibabel.affines import apply_affine

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError
from gliomatch.solver.domain import Domain
from gliomatch.solver.kernels import empty_rows, grow_from_flags, stage_box
from gliomatch.solver.reference import stage_reference

__all__ = ["SCHEME", "Simulation", "TumorParams", "rkl1_stages", "simulate", "time_step"]

STEPPINGS = ("rkl1", "euler")
#: Identifies the default discretisation; databases record it, and a resumed build must match.
SCHEME = "fk-fv7-rkl1-exactlogistic-v1"
#: Most RKL1 stages per step (limits the step when the reaction does not).
MAX_STAGES = 24
#: Cells with u > ACTIVE_EPS bound the active region of the fast solver.
ACTIVE_EPS = 1e-8
DEFAULT_SEED_SIGMA_MM = 1.5
#: Most stage evaluations one run may take by default: the published parameter ranges need at
#: most ~10^4 (D_w 1.5 mm^2/d, rho 0.2 /d, T 1500 d at 128^3), so this is ~100x headroom and
#: stops a mistyped parameter (D_w = 1e6) from running for hours without a word.
MAX_EVALUATIONS = 1_000_000


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


def rkl1_stages(ratio: float) -> int:
    """Fewest RKL1 stages ``s`` with ``(s^2 + s) / 2 >= ratio`` (``ratio = dt / dt_E``)."""
    if ratio <= 1.0:
        return 1
    return int(math.ceil((-1.0 + math.sqrt(1.0 + 8.0 * ratio)) / 2.0 - 1e-12))


def _stage_coefficients(stages: int, c_total: float) -> list[tuple[float, float, float]]:
    """RKL1 stages as ``(a, b, c)`` of ``Y_j = a Y_{j-1} + b Y_{j-2} + c L(Y_{j-1})``.

    ``c_total = D_w dt / h^2``; one stage is forward Euler.
    """
    if stages == 1:
        return [(1.0, 0.0, c_total)]
    w1 = 2.0 / (stages * stages + stages)
    out = [(1.0, 0.0, w1 * c_total)]
    for j in range(2, stages + 1):
        mu = (2.0 * j - 1.0) / j
        out.append((mu, (1.0 - j) / j, mu * w1 * c_total))
    return out


def time_step(
    domain: Domain,
    dw: float,
    rho: float,
    *,
    cfl: float = 0.9,
    reaction_cfl: float = 0.1,
    stepping: str = "rkl1",
) -> tuple[float, int]:
    """The solver's step (days) and its number of stages.

    ``dt_E = cfl h^2 / (6 D_max)`` is the forward-Euler diffusion limit; the reaction limits
    every step to ``reaction_cfl / rho``. Euler takes ``min`` of the two; RKL1 takes the reaction
    limit (at most ``MAX_STAGES`` stages' worth of ``dt_E``) with as few stages as are stable.
    """
    if stepping not in STEPPINGS:
        raise GliomatchError(f"unknown stepping {stepping!r}; use one of {', '.join(STEPPINGS)}")
    dmax = dw * domain.max_face
    dt_e = cfl * domain.spacing**2 / (6.0 * dmax) if dmax > 0 else math.inf
    dt_r = reaction_cfl / rho if rho > 0 else math.inf
    if stepping == "euler":
        dt, stages = min(dt_e, dt_r), 1
    else:
        dt = min(dt_r, dt_e * (MAX_STAGES * MAX_STAGES + MAX_STAGES) / 2.0)
        stages = rkl1_stages(dt / dt_e) if math.isfinite(dt_e) else 1
    if not math.isfinite(dt):
        dt, stages = 1.0, 1  # nothing evolves; any step is exact
    return float(dt), int(stages)


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
    """Numba stages restricted to the growing box where |u| > ACTIVE_EPS.

    Three buffers rotate through the stages. The box never shrinks, so cells outside it were
    never updated and hold the same (sub-ACTIVE_EPS) value in every buffer.
    """

    def __init__(self, domain: Domain, u0: np.ndarray, thr: float):
        self.d = domain
        self.bufs = [u0.copy(), u0.copy(), u0.copy()]
        self.thr = thr
        n = np.asarray(u0.shape)
        self.lim_lo = np.ones(3, dtype=np.int64)
        self.lim_hi = n.astype(np.int64) - 1
        idx = np.argwhere(np.abs(u0) > ACTIVE_EPS)
        self.lo = np.maximum(idx.min(0) - 1, self.lim_lo).astype(np.int64)
        self.hi = np.minimum(idx.max(0) + 2, self.lim_hi).astype(np.int64)
        self.rows, self.flags = empty_rows(u0.shape[0])
        self.evaluations = 0
        self.scratch = None  # peek's buffers
        self.dirty_lo, self.dirty_hi = self.lo.copy(), self.hi.copy()

    @property
    def u(self):
        return self.bufs[0]

    def _run(self, bufs, lo, hi, coeffs, growth) -> tuple[int, int]:
        """Apply the stages to ``bufs[0]``; returns (count, index of the result buffer)."""
        d = self.d
        prev2 = prev1 = 0
        for j, (a, b, c) in enumerate(coeffs):
            out = ({0, 1, 2} - {prev1, prev2}).pop() if prev1 != prev2 else 1
            g = growth if j == len(coeffs) - 1 else 1.0
            args = (d.fx, d.fy, d.fz, d.span, a, b, c, g, lo, hi, self.thr, self.rows)
            stage_box(bufs[prev1], bufs[prev2], bufs[out], *args, ACTIVE_EPS, self.flags)
            grow_from_flags(self.flags, lo, hi, self.lim_lo, self.lim_hi)
            prev2, prev1 = prev1, out
            self.evaluations += 1
        return int(self.rows[lo[0] : hi[0]].sum()), prev1

    def step(self, coeffs, growth) -> int:
        count, res = self._run(self.bufs, self.lo, self.hi, coeffs, growth)
        self.bufs = [self.bufs[res]] + [b for i, b in enumerate(self.bufs) if i != res]
        return count

    def peek(self, coeffs, growth) -> tuple[np.ndarray, int]:
        """The state a partial step would reach, without advancing; returns a view into
        scratch buffers, valid until the next ``peek``.

        Outside the active box every buffer holds the same values, so the scratch buffers are
        copied in full once; later peeks refresh only the box this peek reads (with its halo)
        united with the box the previous peek wrote.
        """
        if self.scratch is None:
            self.scratch = [b.copy() for b in self.bufs]
        else:
            n = np.asarray(self.u.shape)
            lo = np.maximum(np.minimum(self.lo, self.dirty_lo) - 1, 0)
            hi = np.minimum(np.maximum(self.hi, self.dirty_hi) + 1, n)
            region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            for dst, src in zip(self.scratch, self.bufs, strict=True):
                dst[region] = src[region]
        lo, hi = self.lo.copy(), self.hi.copy()
        count, res = self._run(self.scratch, lo, hi, coeffs, growth)
        self.dirty_lo, self.dirty_hi = lo, hi
        return self.scratch[res], count

    def current(self) -> tuple[np.ndarray, int]:
        return self.u, int(np.count_nonzero(self.u >= self.thr))


class _ReferenceStepper:
    """Whole-grid NumPy stages (:func:`stage_reference`)."""

    def __init__(self, domain: Domain, u0: np.ndarray, thr: float):
        self.d, self.u, self.thr = domain, u0.copy(), thr
        self.evaluations = 0

    def _run(self, coeffs, growth):
        d = self.d
        prev2 = prev1 = self.u
        for j, (a, b, c) in enumerate(coeffs):
            g = growth if j == len(coeffs) - 1 else 1.0
            prev2, prev1 = prev1, stage_reference(prev1, prev2, d.fx, d.fy, d.fz, a, b, c, g)
            self.evaluations += 1
        return prev1, int(np.count_nonzero(prev1 >= self.thr))

    def step(self, coeffs, growth) -> int:
        self.u, count = self._run(coeffs, growth)
        return count

    def peek(self, coeffs, growth):
        return self._run(coeffs, growth)

    def current(self):
        return self.u, int(np.count_nonzero(self.u >= self.thr))


def simulate(
    space: Atlas | Domain,
    x: float | TumorParams,
    y: float | None = None,
    z: float | None = None,
    dw: float | None = None,
    rho: float | None = None,
    times=None,
    *,
    ratio: float = 10.0,
    method: str = "fast",
    seed_sigma_mm: float = DEFAULT_SEED_SIGMA_MM,
    stop_volume_cm3: float | None = None,
    stop_threshold: float = 0.2,
    cfl: float = 0.9,
    reaction_cfl: float = 0.1,
    stepping: str = "rkl1",
    u0: np.ndarray | None = None,
    max_evaluations: int = MAX_EVALUATIONS,
    on_snapshot=None,
) -> Simulation:
    """Simulate tumor growth from a seed and return the density at each of ``times``.

    Parameters
    ----------
    space : Atlas or Domain
        Where the tumor grows. Pass a :class:`Domain` to reuse it across many runs.
    x : float or TumorParams
        The seed's first coordinate, or the whole parameter object
        ``theta = TumorParams(x, y, z, dw, rho, t_end)``: ``simulate(space, theta)`` returns
        the density at ``t_end`` (or at ``times`` when given).
    y, z : float
        With ``x``: the seed position as fractions of the grid extent, in [0, 1].
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
    cfl, reaction_cfl : float
        Fraction of the diffusion stability limit; bound on ``rho dt``.
    stepping : {"rkl1", "euler"}
        RKL1 super-time-stepping (default) or forward Euler (see the module notes).
    u0 : ndarray, optional
        Initial density on the unpadded grid instead of a seed (x, y, z are then only reported).
    max_evaluations : int
        Refuse a run that would take more stage evaluations than this (see
        :data:`MAX_EVALUATIONS`).
    on_snapshot : callable, optional
        ``on_snapshot(t, u)`` receives each snapshot instead of it being stored (``densities``
        is then empty): ``u`` is a read-only view of the density on the unpadded grid, valid
        during the call only. A database build keeps the few snapshots that pass its size
        filter without copying the others.

    Returns
    -------
    Simulation

    Raises
    ------
    GliomatchError
        Seed outside brain tissue, negative or non-finite D_w, rho or times, unknown method.
    """
    t_start = time.perf_counter()
    if isinstance(x, TumorParams):
        if any(v is not None for v in (y, z, dw, rho)):
            raise GliomatchError("give either a TumorParams or x, y, z, dw, rho, not both")
        theta = x
        x, y, z, dw, rho = theta.x, theta.y, theta.z, theta.dw, theta.rho
        times = [theta.t_end] if times is None else times
    elif any(v is None for v in (y, z, dw, rho, times)):
        raise GliomatchError("simulate needs x, y, z, dw, rho and times (or a TumorParams)")
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

    dt, stages = time_step(domain, dw, rho, cfl=cfl, reaction_cfl=reaction_cfl, stepping=stepping)
    needed = math.ceil(float(targets[-1]) / dt) * stages
    if needed > max_evaluations:
        raise GliomatchError(
            f"this run would take ~{needed:.3g} solver stages (D_w {dw:g} mm^2/day, rho "
            f"{rho:g} /day, {float(targets[-1]):g} days on {domain.spacing:g} mm voxels; the "
            f"limit is {max_evaluations:.3g}); the published ranges are D_w 0.02-1.5 mm^2/day "
            "and rho 0.002-0.2 /day: check the units"
        )
    dt_e = time_step(domain, dw, 0.0, cfl=cfl, stepping="euler")[0]
    h2 = domain.spacing**2
    stop_voxels = math.inf
    if stop_volume_cm3 is not None:
        stop_voxels = stop_volume_cm3 * 1000.0 / domain.spacing**3
    stepper_cls = _FastStepper if method == "fast" else _ReferenceStepper
    stepper = stepper_cls(domain, u, stop_threshold)

    def coeffs(h, s):
        return _stage_coefficients(s, dw * h / h2), math.exp(rho * h)

    full = coeffs(dt, stages)
    out_t, out_u = [], []
    n = 0
    stopped = False
    for t_target in targets:
        n_target = int(math.floor(t_target / dt + 1e-9))
        while n < n_target:
            count = stepper.step(*full)
            n += 1
            if count > stop_voxels:
                stopped = True
                break
        if stopped:
            break
        rem = t_target - n * dt
        if rem > 1e-9 * max(dt, 1.0):
            s_rem = 1 if stepping == "euler" else rkl1_stages(rem / dt_e)
            snap, count = stepper.peek(*coeffs(rem, s_rem))
        else:
            snap, count = stepper.current()
        out_t.append(float(t_target))
        interior = snap[1:-1, 1:-1, 1:-1]
        if on_snapshot is None:
            out_u.append(np.ascontiguousarray(interior, dtype=np.float32))
        else:
            view = interior.view()
            view.flags.writeable = False
            on_snapshot(float(t_target), view)
        if count > stop_voxels:
            stopped = t_target != targets[-1]
            break

    seed_mm = apply_affine(domain.affine, p)
    return Simulation(
        times=out_t,
        densities=out_u,
        dt=dt,
        steps=n,
        stopped_early=stopped,
        seed_voxel=p,
        seed_mm=seed_mm,
        elapsed_s=time.perf_counter() - t_start,
        info={
            "method": method,
            "stepping": stepping,
            "stages": stages,
            "evaluations": stepper.evaluations,
            "ratio": domain.ratio,
            "spacing_mm": domain.spacing,
        },
    )
