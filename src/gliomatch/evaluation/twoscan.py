"""Synthetic two-scan patients and the recovery of rho, D_w and T from them
(``gliomatch bench two-scan``).

A patient is a held-out tumor (the database's sampler with another seed: a seed and a D_w/rho
not in the database, (D_w, rho, T1) a prior draw kept by the size filter) and an interval N
(uniform in ``interval_range`` days): the first scan is the tumor at rho*T1, the follow-up at
rho*(T1 + N), both thresholded at 0.2 / 0.6 in atlas space. A follow-up that outgrows the
database's largest whole-tumor volume is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gliomatch.database.trajectories import iter_held_out, space
from gliomatch.errors import GliomatchError
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL
from gliomatch.patient.twoscan import two_scan
from gliomatch.progress import report
from gliomatch.search import Query, get_strategy

__all__ = ["TwoScanPatient", "bench_two_scan", "two_scan_patients"]


@dataclass
class TwoScanPatient:
    first: Query
    followup: Query
    interval_days: float
    truth: dict  # seed fraction, dw, rho, t_first_days, dw_over_rho


def two_scan_patients(
    db, n: int, *, seed: int = 0, interval_range=(30.0, 180.0)
) -> list[TwoScanPatient]:
    """``n`` synthetic two-scan patients (deterministic in ``seed``; see the module notes).

    The first scans are the database's held-out query tumors (its sampler, another seed: so
    (seed, D_w, rho, T1) follow plain rejection sampling); each follow-up is the same
    trajectory ``interval`` days later, simulated in dimensionless time up to the size limit
    (a follow-up past the limit is skipped)."""
    cfg = db.build_config
    atlas, domain, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    vox = atlas.voxel_volume_cm3
    max_cm3 = cfg.size_filter.flair_max_cm3
    out = []
    # held-out tumors are simulated as they are consumed, at most 10n (skipped follow-ups)
    candidates = iter_held_out(db, 10 * n, seed_offset=2_000_003 + seed)
    for j, (row, codes) in enumerate(candidates):
        rng = np.random.default_rng([cfg.seed + 2_000_003 + seed, j, 7])
        interval = float(rng.uniform(*interval_range))
        r, rho, t1 = float(row["dw_over_rho"]), float(row["rho"]), float(row["t_end"])
        sim = cfg.model.simulate_stages(
            domain, (row["x"], row["y"], row["z"]), dw_over_rho=r,
            stages=[rho * (t1 + interval)], stop_volume_cm3=max_cm3, stop_threshold=FLAIR_LEVEL,
        )  # fmt: skip
        if not sim.densities:
            continue  # grew past the size limit before the follow-up
        u2 = sim.densities[0]
        f2, t2 = u2 >= FLAIR_LEVEL, u2 >= T1GD_LEVEL
        if f2.sum() * vox > max_cm3:
            continue
        truth = {
            "seed": [float(row["x"]), float(row["y"]), float(row["z"])],
            "dw_over_rho": r,
            "rho": rho,
            "dw": float(row["dw"]),
            "t_first_days": t1,
        }
        out.append(TwoScanPatient(Query.from_codes(codes), Query(f2, t2 & f2), interval, truth))
        if len(out) == n:
            break  # before the generator simulates another trajectory
    if len(out) < n:
        raise GliomatchError(f"only {len(out)} of {n} two-scan patients stayed below the limit")
    return out


def bench_two_scan(
    db, *, patients: int = 50, seed: int = 0, strategy: str = "exact", progress=None
) -> dict:
    """Recover rho, D_w, T1 and D_w/rho from ``patients`` synthetic two-scan patients;
    returns per-patient rows and median / percentile relative errors."""
    if patients < 1:
        raise GliomatchError(f"patients must be >= 1, got {patients}")
    strat = get_strategy(strategy, db).ensure_ready()
    report(progress, 0, patients, "simulating two-scan patients")
    pats = two_scan_patients(db, patients, seed=seed)
    rows = []
    for n, p in enumerate(pats, 1):
        t = time.perf_counter()
        res = two_scan(db, p.first, p.followup, p.interval_days, strategy=strat).summary["best"]
        sec = time.perf_counter() - t
        rows.append(
            {
                "interval_days": p.interval_days,
                **{f"{q}_true": p.truth[q] for q in ("rho", "dw", "t_first_days", "dw_over_rho")},
                **{f"{q}_est": res[q] for q in ("rho", "dw", "t_first_days", "dw_over_rho")},
                "score": res["score"],
                "seconds": sec,
            }
        )
        report(progress, n, patients, "two-scan inference")
    errors = {}
    for q in ("rho", "dw", "t_first_days", "dw_over_rho"):
        rel = np.array([abs(r[f"{q}_est"] / r[f"{q}_true"] - 1) for r in rows])
        truth = np.array([r[f"{q}_true"] for r in rows])
        est = np.array([r[f"{q}_est"] for r in rows])
        errors[q] = {
            "median_rel_error": float(np.median(rel)),
            "p90_rel_error": float(np.percentile(rel, 90)),
            "within_25pct": float(np.mean(rel <= 0.25)),
            "corr_log": float(np.corrcoef(np.log(truth), np.log(np.maximum(est, 1e-12)))[0, 1])
            if len(rows) > 2
            else float("nan"),
        }
    return {
        "patients": len(rows),
        "n_db": len(db),
        "strategy": strategy,
        "errors": errors,
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
        "rows": rows,
    }
