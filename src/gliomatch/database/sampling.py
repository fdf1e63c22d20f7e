"""Sampling of tumor parameters theta = (x, y, z, D_w, rho, T_end) for the database.

The target is plain rejection sampling: theta drawn from the prior (uniform, or log-uniform, in
the published ranges; the seed uniform in tissue), kept if the simulated tumor passes the size
filter. Two samplers reach it with many tumors per simulation.

``plain``
    One *trajectory* per (seed, D_w, rho), simulated in days, with ``snapshots`` T_end values
    drawn from the prior: each snapshot is a prior draw of theta.

``scaled`` (the scaling symmetry)
    With t' = rho t, Fisher-Kolmogorov reads du/dt' = div((D/rho) grad u) + u (1 - u): the tumor
    depends on the seed, r = D_w/rho and the stage tau = rho T only. One simulation per
    (seed, r), with D = r and rho = 1 so that its time *is* tau, serves every (D_w, rho, T) of
    that ratio. r is drawn as D_w/rho of a prior draw; each of the ``snapshots`` candidate
    stages draws its own rho from the prior conditional on r, p(rho | r) ~ rho p_D(r rho)
    p_rho(rho) (the factor rho is the Jacobian of D_w = r rho), and its own T from p_T;
    then D_w = r rho and tau = rho T. Each candidate is so a prior draw of theta, and a kept
    candidate is distributed as a tumor of plain rejection sampling; tests compare the two.

In both, a trajectory's kept tumors share a seed and a shape family: more snapshots per
simulation is cheaper, more trajectories cover seeds and infiltration lengths better (the
design table of docs/methods.md measures the trade-off). Every trajectory draws from its own
generator seeded by ``(seed, trajectory id)``, so the database does not depend on how work is
split over workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError

__all__ = [
    "SamplingConfig",
    "SizeFilter",
    "Trajectory",
    "conditional_rho",
    "identifiable",
    "sample_trajectory",
]

#: Default candidate stages per simulation, per sampler (scaled: chosen by the design table).
SNAPSHOTS = {"plain": 8, "scaled": 64}
#: Fractional seed box of the papers (Ezhov et al.): x 0.15-0.7, y 0.2-0.8, z 0.15-0.7.
PAPER_SEED_BOX = ((0.15, 0.7), (0.2, 0.8), (0.15, 0.7))


@dataclass(frozen=True)
class SamplingConfig:
    """Parameter ranges (the papers' defaults) and how to draw from them.

    D_w 0.02-1.5 mm^2/day (0.0002-0.015 cm^2/day), rho 0.002-0.2 /day, T_end 50-1500 days:
    the ranges of Ezhov et al., "Geometry-aware neural solver" / "Learn-Morph-Infer", and of
    the database-query paper. Seeds are drawn uniformly among brain-tissue voxels
    (WM + GM >= 0.5), or uniformly in the papers' fractional box with ``seed_box="paper"``
    (a seed outside tissue is redrawn).
    """

    dw: tuple[float, float] = (0.02, 1.5)
    rho: tuple[float, float] = (0.002, 0.2)
    t_end: tuple[float, float] = (50.0, 1500.0)
    log_uniform: bool = False
    seed_box: str = "tissue"  # or "paper"
    #: Candidate stages per simulation (default: :data:`SNAPSHOTS` of the sampler).
    snapshots: int | None = None
    sampler: str = "scaled"  # or "plain"

    def __post_init__(self):
        if self.sampler not in SNAPSHOTS:
            raise GliomatchError(f"sampler must be 'scaled' or 'plain', got {self.sampler!r}")
        if self.snapshots is None:
            object.__setattr__(self, "snapshots", SNAPSHOTS[self.sampler])
        for name in ("dw", "rho", "t_end"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise GliomatchError(f"{name} range must be finite, got [{lo}, {hi}]")
            if not lo < hi:
                raise GliomatchError(f"{name} range is empty: [{lo}, {hi}]; need low < high")
            if lo <= 0 and (self.log_uniform or name != "t_end"):
                raise GliomatchError(f"{name} range must be positive, got [{lo}, {hi}]")
            if lo < 0:
                raise GliomatchError(f"{name} range must be >= 0, got [{lo}, {hi}]")
        if self.seed_box not in ("tissue", "paper"):
            raise GliomatchError(f"seed_box must be 'tissue' or 'paper', got {self.seed_box!r}")
        if not 1 <= int(self.snapshots) <= 256:
            raise GliomatchError(f"snapshots per trajectory must be 1..256, got {self.snapshots}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SamplingConfig:
        d = dict(d)
        for k in ("dw", "rho", "t_end"):
            d[k] = tuple(d[k])
        d.setdefault("sampler", "plain")  # databases built before the scaled sampler
        return cls(**d)


@dataclass(frozen=True)
class SizeFilter:
    """Keep a tumor only if its volumes are realistic.

    Defaults follow the range of BraTS glioma segmentations used by the papers (whole tumor,
    i.e. FLAIR hyperintensity, of a few to a few hundred cm^3; a visible enhancing core):
    whole tumor (u >= 0.2) in [5, 300] cm^3 and tumor core (u >= 0.6) >= 0.5 cm^3.
    Sources: Menze et al., IEEE TMI 34 (2015) (BraTS); Ezhov et al., database-query paper.
    """

    flair_min_cm3: float = 5.0
    flair_max_cm3: float = 300.0
    t1gd_min_cm3: float = 0.5
    t1gd_max_cm3: float = 300.0
    source: str = field(
        default="BraTS whole-tumor/core volume ranges (Menze et al. 2015; Ezhov et al.)"
    )

    def __post_init__(self):
        vals = (self.flair_min_cm3, self.flair_max_cm3, self.t1gd_min_cm3, self.t1gd_max_cm3)
        if not all(np.isfinite(v) and v >= 0 for v in vals):
            raise GliomatchError(f"size filter volumes must be finite and >= 0, got {vals}")
        if self.flair_min_cm3 >= self.flair_max_cm3 or self.t1gd_min_cm3 >= self.t1gd_max_cm3:
            raise GliomatchError("size filter: each minimum must be below its maximum")

    def keep(self, flair_cm3: float, t1gd_cm3: float) -> bool:
        return (
            self.flair_min_cm3 <= flair_cm3 <= self.flair_max_cm3
            and self.t1gd_min_cm3 <= t1gd_cm3 <= self.t1gd_max_cm3
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Trajectory:
    """One simulation and the theta of each candidate stage.

    The simulation runs with ``sim_dw``, ``sim_rho`` to the sorted ``times`` (days for the plain
    sampler; tau = rho T for the scaled one, where ``sim_rho`` = 1). Candidate ``j`` stands for
    the tumor (x, y, z, ``dws[j]``, ``rhos[j]``, ``t_ends[j]``).
    """

    traj_id: int
    x: float
    y: float
    z: float
    sim_dw: float
    sim_rho: float
    times: tuple[float, ...]
    dws: tuple[float, ...]
    rhos: tuple[float, ...]
    t_ends: tuple[float, ...]


#: What a reader of one tumor's (D_w, rho, T_end) must be told (every output that lists them).
NOT_IDENTIFIABLE = (
    "One scan does not determine D_w, rho and T_end separately: with t' = rho*t the model "
    "depends on D_w/rho and rho*T only, so every (D_w, rho, T_end) with the same D_w/rho and "
    "rho*T grows the same tumor. A match's (D_w, rho, T_end) is one member of that family, not "
    "an estimate; give the tumor's age (--age-days) or a second scan (--followup-seg with "
    "--interval-days) to estimate them."
)
IDENTIFIABLE = ("dw_over_rho", "infiltration_mm", "rho_t")


def identifiable(dw, rho, t_end) -> dict:
    """What one scan determines besides the seed: D_w/rho (mm^2), its square root, the
    infiltration length (mm), and the stage rho T (dimensionless). Works on arrays too."""
    ratio = np.asarray(dw, dtype=np.float64) / np.asarray(rho, dtype=np.float64)
    stage = np.asarray(rho, dtype=np.float64) * np.asarray(t_end, dtype=np.float64)
    if ratio.ndim == 0:
        ratio, stage = float(ratio), float(stage)
    return {"dw_over_rho": ratio, "infiltration_mm": np.sqrt(ratio), "rho_t": stage}


def _draw(rng, lo_hi, log, size=None):
    lo, hi = lo_hi
    if log:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))
    return rng.uniform(lo, hi, size=size)


def conditional_rho(rng, r: float, config: SamplingConfig, size: int) -> np.ndarray:
    """``size`` draws of rho from the prior conditional on D_w / rho = ``r``.

    The density is p(rho | r) ~ rho p_D(r rho) p_rho(rho) on the rhos whose D_w = r rho lies in
    its range: proportional to rho (uniform priors; sampled by inverting the CDF, rho^2 uniform)
    or to 1/rho (log-uniform priors: rho log-uniform on that interval).
    """
    lo = max(config.rho[0], config.dw[0] / r)
    hi = min(config.rho[1], config.dw[1] / r)
    if not lo <= hi:  # pragma: no cover - r was drawn as D_w / rho, so the interval is not empty
        raise GliomatchError(f"no rho in range for D_w / rho = {r}")
    if config.log_uniform:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), size=size))
    return np.sqrt(rng.uniform(lo * lo, hi * hi, size=size))


def _seed(rng, atlas: Atlas, config: SamplingConfig, tissue_idx) -> np.ndarray:
    shape = np.asarray(atlas.shape)
    if config.seed_box == "tissue":
        if tissue_idx is None:
            tissue_idx = np.argwhere(atlas.tissue)
        vox = tissue_idx[rng.integers(len(tissue_idx))]
        return vox / (shape - 1)
    for _ in range(10_000):
        frac = np.array([rng.uniform(lo, hi) for lo, hi in PAPER_SEED_BOX])
        vox = np.rint(frac * (shape - 1)).astype(int)
        if atlas.tissue[tuple(vox)]:
            return frac
    raise GliomatchError("no tissue found in the papers' seed box")  # pragma: no cover


def sample_trajectory(
    atlas: Atlas,
    config: SamplingConfig,
    seed: int,
    traj_id: int,
    tissue_idx: np.ndarray | None = None,
) -> Trajectory:
    """Draw the parameters of trajectory ``traj_id`` (deterministic in ``seed``, ``traj_id``)."""
    rng = np.random.default_rng([int(seed), int(traj_id)])
    frac = _seed(rng, atlas, config, tissue_idx)
    dw = float(_draw(rng, config.dw, config.log_uniform))
    rho = float(_draw(rng, config.rho, config.log_uniform))
    m = int(config.snapshots)
    if config.sampler == "plain":
        times = np.sort(_draw(rng, config.t_end, config.log_uniform, size=m))
        dws, rhos, t_ends = np.full(m, dw), np.full(m, rho), times
        sim_dw, sim_rho = dw, rho
    else:
        r = dw / rho
        rhos = conditional_rho(rng, r, config, m)
        t_ends = _draw(rng, config.t_end, config.log_uniform, size=m)
        dws = np.clip(r * rhos, *config.dw)  # r rho is in range up to round-off
        taus = rhos * t_ends
        order = np.argsort(taus, kind="stable")
        times, dws, rhos, t_ends = taus[order], dws[order], rhos[order], t_ends[order]
        sim_dw, sim_rho = r, 1.0
    return Trajectory(
        int(traj_id),
        *(float(f) for f in frac),
        float(sim_dw),
        float(sim_rho),
        *(tuple(float(v) for v in a) for a in (times, dws, rhos, t_ends)),
    )
