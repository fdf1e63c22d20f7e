"""Sampling of tumor parameters theta = (x, y, z, D_w, rho, T_end) for the database.

Each *trajectory* (one simulation per seed, D_w, rho) gives several tumors: snapshots at several
T_end values. This is sound because u depends on D_w T and rho T only, so one trajectory samples
a line of the parameter space. Every trajectory draws from its own generator seeded by
``(seed, trajectory id)``, so the database does not depend on how work is split over workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError

__all__ = ["SamplingConfig", "SizeFilter", "Trajectory", "sample_trajectory"]

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
    snapshots: int = 8

    def __post_init__(self):
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
        if not 1 <= int(self.snapshots) <= 64:
            raise GliomatchError(f"snapshots per trajectory must be 1..64, got {self.snapshots}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SamplingConfig:
        d = dict(d)
        for k in ("dw", "rho", "t_end"):
            d[k] = tuple(d[k])
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
    traj_id: int
    x: float
    y: float
    z: float
    dw: float
    rho: float
    times: tuple[float, ...]


def _draw(rng, lo_hi, log):
    lo, hi = lo_hi
    if log:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def sample_trajectory(
    atlas: Atlas,
    config: SamplingConfig,
    seed: int,
    traj_id: int,
    tissue_idx: np.ndarray | None = None,
) -> Trajectory:
    """Draw the parameters of trajectory ``traj_id`` (deterministic in ``seed``, ``traj_id``)."""
    rng = np.random.default_rng([int(seed), int(traj_id)])
    shape = np.asarray(atlas.shape)
    if config.seed_box == "tissue":
        if tissue_idx is None:
            tissue_idx = np.argwhere(atlas.tissue)
        vox = tissue_idx[rng.integers(len(tissue_idx))]
        frac = vox / (shape - 1)
    else:
        for _ in range(10_000):
            frac = np.array([rng.uniform(lo, hi) for lo, hi in PAPER_SEED_BOX])
            vox = np.rint(frac * (shape - 1)).astype(int)
            if atlas.tissue[tuple(vox)]:
                break
        else:  # pragma: no cover - the box is mostly brain
            raise GliomatchError("no tissue found in the papers' seed box")
    dw = _draw(rng, config.dw, config.log_uniform)
    rho = _draw(rng, config.rho, config.log_uniform)
    lo, hi = config.t_end
    times = np.sort(rng.uniform(lo, hi, size=int(config.snapshots)))
    return Trajectory(
        int(traj_id), *(float(f) for f in frac), dw, rho, tuple(float(t) for t in times)
    )
