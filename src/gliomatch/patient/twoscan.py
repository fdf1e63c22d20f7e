"""Two scans with a known interval: the trajectory and both stages, hence rho, D_w and T.

One scan fixes the seed, D_w/rho and the stage rho*T (:mod:`gliomatch.patient.estimates`).
Two scans of the same untreated tumor N days apart lie on one trajectory (same seed and
D_w/rho) at stages tau1 = rho*T1 < tau2 = rho*(T1 + N), so

    rho = (tau2 - tau1) / N,   D_w = (D_w/rho) * rho,   T1 = tau1 / rho.

1. Candidates: the database's trajectories (tumors sharing ``traj_id``: one seed and one
   D_w/rho) scored by their best stage for each scan among each scan's top matches
   (max Dice-sum for scan 1 + max for scan 2).
2. Refinement: each of the best ``trajectories`` candidates is simulated again in
   dimensionless time (D = D_w/rho, rho = 1, so the clock is tau) through a dense geometric
   grid of stages; both scans are scored at every stage, and the pair tau1 < tau2 with the
   highest Dice-sum total is kept. The database's stages are random and sparse; the dense
   grid makes tau (and so rho) precise to the grid step (``STAGE_STEP``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gliomatch.database.config import BuildConfig
from gliomatch.database.trajectories import space
from gliomatch.errors import GliomatchError
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL
from gliomatch.patient.inputs import positive_days
from gliomatch.search.base import Query

__all__ = ["STAGE_STEP", "TwoScanResult", "two_scan"]

#: Dense stage grid: geometric from TAU_MIN, each stage this factor above the last.
STAGE_STEP = 1.015
TAU_MIN = 0.2
#: The refinement stops once the whole tumor exceeds this multiple of the follow-up's volume.
STOP_FACTOR = 1.5


@dataclass
class TwoScanResult:
    """``summary`` (JSON-able: the best trajectory and the other refined candidates) and the
    best trajectory's atlas-space densities at both scans."""

    summary: dict
    density_first: np.ndarray
    density_followup: np.ndarray


class _Scorer:
    """Dice_T1Gd + Dice_FLAIR of a density against one query, cheaply: the model's mask sizes
    on the whole grid, the overlaps only inside the query's bounding box."""

    def __init__(self, q: Query):
        f, t = q.flair, q.t1gd
        idx = np.argwhere(f)
        lo, hi = idx.min(0), idx.max(0) + 1
        self.box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        self.f, self.t = f[self.box], t[self.box]
        self.nf, self.nt = int(f.sum()), int(t.sum())

    def __call__(self, u: np.ndarray) -> tuple[float, float]:
        a_f = int(np.count_nonzero(u >= FLAIR_LEVEL))
        a_t = int(np.count_nonzero(u >= T1GD_LEVEL))
        ub = u[self.box]
        i_f = int(np.count_nonzero((ub >= FLAIR_LEVEL) & self.f))
        i_t = int(np.count_nonzero((ub >= T1GD_LEVEL) & self.t))

        def d(i, a, b):
            return 1.0 if a + b == 0 else 2.0 * i / (a + b)

        return d(i_t, a_t, self.nt), d(i_f, a_f, self.nf)


def _candidates(db, first, followup, n: int) -> list[int]:
    """The ``n`` trajectories with the best (max score for scan 1) + (max for scan 2) among
    the two scans' matches ``(scores, ids)`` (a trajectory missing from one list scores 0
    there)."""
    traj = db.params["traj_id"].to_numpy()
    best = {}
    for which, (scores, ids) in enumerate((first, followup)):
        for s, i in zip(scores, ids, strict=True):
            t = int(traj[int(i)])
            cur = best.setdefault(t, [0.0, 0.0])
            cur[which] = max(cur[which], float(s))
    ranked = sorted(best, key=lambda t: (-(best[t][0] + best[t][1]), t))
    return ranked[:n]


def _refine(db, cfg: BuildConfig, traj_id: int, q1: Query, q2: Query) -> dict:
    """Simulate trajectory ``traj_id`` in dimensionless time and pick tau1 < tau2."""
    p = db.params
    row = p[p.traj_id == traj_id].iloc[0]
    atlas, domain, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    r = float(row.dw_over_rho)
    stop = STOP_FACTOR * max(q2.flair.sum(), q1.flair.sum()) * atlas.voxel_volume_cm3
    s1, s2 = _Scorer(q1), _Scorer(q2)
    taus, d1, d2 = [], [], []

    def on_snapshot(t, u):
        taus.append(t)
        d1.append(s1(u))
        d2.append(s2(u))

    tau_max = float(cfg.sampling.rho[1] * cfg.sampling.t_end[1]) * 2
    n = int(math.ceil(math.log(tau_max / TAU_MIN) / math.log(STAGE_STEP))) + 1
    grid = TAU_MIN * STAGE_STEP ** np.arange(n)
    cfg.model.simulate_stages(
        domain, (float(row.x), float(row.y), float(row.z)), dw_over_rho=r, stages=grid,
        stop_volume_cm3=stop, stop_threshold=FLAIR_LEVEL, on_snapshot=on_snapshot,
    )  # fmt: skip
    if len(taus) < 2:
        raise GliomatchError(f"trajectory {traj_id}: the refinement reached fewer than 2 stages")
    a = np.array([t + f for t, f in d1])
    b = np.array([t + f for t, f in d2])
    # best pair i < j: for each j, the first stage before it where scan 1 scores best
    best_before = np.zeros(len(a), dtype=int)
    for j in range(1, len(a)):
        best_before[j] = j if a[j] > a[best_before[j - 1]] else best_before[j - 1]
    j = int(np.argmax(a[best_before[:-1]] + b[1:])) + 1
    i = int(best_before[j - 1])
    return {
        "traj_id": int(traj_id),
        "seed_mm": [float(row.x_mm), float(row.y_mm), float(row.z_mm)],
        "seed_fraction": [float(row.x), float(row.y), float(row.z)],
        "dw_over_rho": r,
        "infiltration_mm": math.sqrt(r),
        "tau_first": float(taus[i]),
        "tau_followup": float(taus[j]),
        "dice_first": {"t1gd": d1[i][0], "flair": d1[i][1]},
        "dice_followup": {"t1gd": d2[j][0], "flair": d2[j][1]},
        "score": float(a[i] + b[j]),
    }


def two_scan(
    db,
    first: Query,
    followup: Query,
    interval_days: float,
    *,
    strategy,
    k: int = 100,
    trajectories: int = 3,
) -> TwoScanResult:
    """Fit one trajectory and two stages to two atlas-space scans ``interval_days`` apart
    (``first`` before ``followup``, no treatment between); see the module notes."""
    interval_days = positive_days(interval_days, "interval_days")
    if trajectories < 1:
        raise GliomatchError(f"refine at least one trajectory, got {trajectories}")
    cfg = db.build_config
    kk = min(k, len(db))
    cands = _candidates(
        db, strategy.search_one(first, kk), strategy.search_one(followup, kk), trajectories
    )
    refined = []
    for t in cands:
        res = _refine(db, cfg, t, first, followup)
        rho = (res["tau_followup"] - res["tau_first"]) / interval_days
        res.update(
            rho=rho,
            dw=res["dw_over_rho"] * rho,
            t_first_days=res["tau_first"] / rho,
            t_followup_days=res["tau_followup"] / rho,
        )
        refined.append(res)
    refined.sort(key=lambda r: (-r["score"], r["traj_id"]))
    best = refined[0]
    lo_r, hi_r = cfg.sampling.rho
    lo_d, hi_d = cfg.sampling.dw
    warnings_ = []
    if not lo_r <= best["rho"] <= hi_r:
        warnings_.append(
            f"rho = {best['rho']:.4g} /day lies outside the database's range [{lo_r:g}, {hi_r:g}]"
            " (check --interval-days and that no treatment came between the scans)"
        )
    if not lo_d <= best["dw"] <= hi_d:
        warnings_.append(
            f"D_w = {best['dw']:.4g} mm^2/day lies outside the database's range "
            f"[{lo_d:g}, {hi_d:g}]"
        )
    summary = {
        "interval_days": float(interval_days),
        "method": (
            "one trajectory (seed, D_w/rho) and two stages tau1 < tau2 maximizing the sum of "
            "both scans' Dice_T1Gd + Dice_FLAIR; rho = (tau2 - tau1) / interval, "
            "D_w = (D_w/rho) * rho, T = tau / rho"
        ),
        "stage_step": STAGE_STEP,
        "best": best,
        "candidates": refined,
        "warnings": warnings_,
    }
    # the best trajectory's densities at both stages (atlas space)
    atlas, domain, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    x, y, z = best["seed_fraction"]
    sim = cfg.model.simulate_stages(
        domain, (x, y, z), dw_over_rho=best["dw_over_rho"],
        stages=[best["tau_first"], best["tau_followup"]],
    )  # fmt: skip
    return TwoScanResult(summary, sim.densities[0], sim.densities[-1])
