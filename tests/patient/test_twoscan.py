"""Two-scan inference (gliomatch.patient.twoscan) on a tiny database."""

import numpy as np
import pytest

from gliomatch.database.config import BuildConfig
from gliomatch.database.trajectories import space
from gliomatch.errors import GliomatchError
from gliomatch.masks import FLAIR_LEVEL, T1GD_LEVEL
from gliomatch.patient.twoscan import two_scan
from gliomatch.search import Query, get_strategy
from gliomatch.solver import simulate


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, resolution=64, seed=21)


def later_scan(db, i, days):
    """Database tumor ``i`` grown ``days`` further along its own trajectory."""
    cfg = BuildConfig.from_dict(db.manifest["build_config"])
    _, domain, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    row = db.params.iloc[i]
    tau2 = row.rho * (row.t_end + days)
    u = simulate(domain, row.x, row.y, row.z, row.dw_over_rho, 1.0, [tau2]).densities[0]
    return Query(u >= FLAIR_LEVEL, (u >= T1GD_LEVEL) & (u >= FLAIR_LEVEL))


@pytest.mark.parametrize("i", [2, 11])
def test_recovers_rho_dw_and_age_on_the_database_trajectory(db, i):
    row = db.params.iloc[i]
    days = 1.0 / row.rho  # one e-folding time of growth between the scans
    first = Query.from_masks(*db.masks(i), db.shape)
    res = two_scan(db, first, later_scan(db, i, days), days, strategy=get_strategy("exact", db))
    best = res.summary["best"]
    assert best["traj_id"] == int(row.traj_id)
    # the stage grid's step is 1.5 %, so rho = (tau2 - tau1) / N is good to a few %
    assert best["rho"] == pytest.approx(row.rho, rel=0.1)
    assert best["dw"] == pytest.approx(row.dw, rel=0.1)
    assert best["t_first_days"] == pytest.approx(row.t_end, rel=0.1)
    assert best["score"] > 3.8
    assert res.density_first.shape == db.shape and res.density_followup.shape == db.shape
    assert (res.density_followup >= FLAIR_LEVEL).sum() > (res.density_first >= FLAIR_LEVEL).sum()


def test_bad_intervals_are_refused(db):
    q = Query.from_masks(*db.masks(0), db.shape)
    strat = get_strategy("exact", db)
    for bad in (0, -5, float("nan")):
        with pytest.raises(GliomatchError, match="interval_days"):
            two_scan(db, q, q, bad, strategy=strat)


def test_bench_two_scan_reports_errors(db):
    from gliomatch.evaluation.twoscan import bench_two_scan

    res = bench_two_scan(db, patients=3)
    assert res["patients"] == 3 and len(res["rows"]) == 3
    for q in ("rho", "dw", "t_first_days", "dw_over_rho"):
        assert np.isfinite(res["errors"][q]["median_rel_error"])
    for r in res["rows"]:
        assert r["rho_est"] > 0 and r["interval_days"] >= 30
