"""Parameter recovery on synthetic queries: identifiable quantities, raw ones, and the
coverage of the posterior intervals (:mod:`gliomatch.patient.estimates`).

For each held-out tumor the truth is known. The best match and the top-k median estimate
every quantity; the posterior (weights over the exact top ``POSTERIOR_K``) gives the 90 %
intervals whose coverage, the fraction of queries whose true value falls inside, is reported
at the shipped temperature and, to show how it was chosen, at a few others.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd

from gliomatch.database.trajectories import held_out_tumors
from gliomatch.errors import GliomatchError
from gliomatch.patient.estimates import (
    POSTERIOR_K,
    QUANTITIES,
    TEMPERATURE,
    conformal_margins,
    estimate,
    load_calibration,
    nonconformity,
    save_calibration,
)
from gliomatch.progress import report
from gliomatch.search import Query, get_strategy

__all__ = ["CALIBRATION_SEED_OFFSET", "COVERAGE_TEMPERATURES", "RAW", "calibrate", "recovery"]

#: The parameters each simulation was run with (not identifiable from one scan).
RAW = ("dw", "rho", "t_end")
SEED = ("x_mm", "y_mm", "z_mm")
#: Temperatures at which the interval coverage is also reported (the calibration sweep).
COVERAGE_TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def _errors(rec: pd.DataFrame, p: str, est: str) -> dict:
    e = rec[f"{p}_{est}"] - rec[f"{p}_true"]
    corr = (
        float(np.corrcoef(rec[f"{p}_{est}"], rec[f"{p}_true"])[0, 1])
        if len(rec) > 2
        else float("nan")
    )
    return {"mae": float(e.abs().mean()), "median_abs": float(e.abs().median()), "corr": corr}


def _coverage(est: dict, truth: dict) -> dict:
    out = {}
    for col in QUANTITIES:
        lo, hi = est["estimates"][col]["interval"]
        out[col] = bool(lo <= truth[col] <= hi)
    s = est["estimates"]["seed_mm"]
    d = np.linalg.norm(np.asarray(s["mean"]) - np.asarray([truth[a] for a in SEED]))
    out["seed_mm"] = bool(d <= s["radius"])
    return out


def recovery(
    queries, truth_rows: dict, params: pd.DataFrame, k: int, calibration: dict | None = None
) -> dict:
    """``{"rows", "errors", "coverage", "coverage_sweep", ...}`` over the synthetic queries.

    ``truth_rows[qid]`` holds the exact ranking's ``top`` ids and ``scores`` (at least
    ``POSTERIOR_K`` of them when the database has that many). ``calibration``: the database's
    (then the coverage is of the calibrated intervals, and the raw coverage is reported too)."""
    rows, covers, raw_covers, sweep = [], [], [], {t: [] for t in COVERAGE_TEMPERATURES}
    widths = {c: [] for c in QUANTITIES} | {"seed_mm": []}
    for q in queries:
        if q.truth is None:
            continue
        top = np.asarray(truth_rows[q.qid]["top"])
        scores = np.asarray(truth_rows[q.qid]["scores"])
        matches = params.iloc[top].reset_index(drop=True)
        post = estimate(matches, scores, calibration=calibration)
        row = {"qid": q.qid}
        for p in (*RAW, *SEED, *QUANTITIES):
            row[f"{p}_true"] = q.truth[p]
            row[f"{p}_best"] = float(matches[p].iloc[0])
            row[f"{p}_topk_median"] = float(matches[p].iloc[:k].median())
        for col in QUANTITIES:
            e = post["estimates"][col]
            row[f"{col}_posterior_median"] = e["median"]
            row[f"{col}_lo"], row[f"{col}_hi"] = e["interval"]
            widths[col].append(e["interval"][1] - e["interval"][0])
        widths["seed_mm"].append(post["estimates"]["seed_mm"]["radius"])
        c = _coverage(post, q.truth)
        row.update({f"{key}_covered": v for key, v in c.items()})
        covers.append(c)
        raw_covers.append({key: v <= 0 for key, v in nonconformity(post, q.truth).items()})
        for t in COVERAGE_TEMPERATURES:
            sweep[t].append(_coverage(estimate(matches, scores, temperature=t), q.truth))
        rows.append(row)
    if not rows:
        return {"rows": [], "errors": {}, "coverage": {}, "coverage_sweep": {}}
    rec = pd.DataFrame(rows)
    errors = {}
    for p in (*RAW, *SEED, *QUANTITIES):
        for est in ("best", "topk_median"):
            errors[f"{p}_{est}"] = _errors(rec, p, est)
    for col in QUANTITIES:
        errors[f"{col}_posterior_median"] = _errors(rec, col, "posterior_median")
    pos = np.sqrt(sum((rec[f"{a}_best"] - rec[f"{a}_true"]) ** 2 for a in SEED))
    errors["seed_distance_mm_best"] = {"mean": float(pos.mean()), "median": float(pos.median())}

    def rate(cs):
        return {key: float(np.mean([c[key] for c in cs])) for key in cs[0]}

    return {
        "rows": rows,
        "errors": errors,
        "coverage": {
            "temperature": TEMPERATURE,
            "level": post["level"],
            "posterior_k": post["posterior_k"],
            "calibrated": calibration is not None,
            "n": len(rows),
            **rate(covers),
            "raw": rate(raw_covers),
            "median_width": {key: float(np.median(v)) for key, v in widths.items()},
        },
        "coverage_sweep": {str(t): rate(cs) for t, cs in sweep.items()},
    }


#: Held-out tumors for calibration use this seed offset (evaluate's queries use others).
CALIBRATION_SEED_OFFSET = 3_000_017


def calibrate(db, *, queries: int = 400, progress=None) -> dict:
    """Calibrate the database's posterior intervals on ``queries`` held-out synthetic tumors
    (exact top ``POSTERIOR_K`` of each) and write ``calibration.json``; returns the record."""
    if queries < 20:
        raise GliomatchError(f"queries must be >= 20 for a calibration, got {queries}")
    exact = get_strategy("exact", db).ensure_ready()
    report(progress, 0, queries, "simulating held-out tumors")
    tumors = held_out_tumors(db, queries, seed_offset=CALIBRATION_SEED_OFFSET)
    params = db.params
    scores, raw = [], []
    for n, (row, codes) in enumerate(tumors, 1):
        s, ids = exact.search_one(Query.from_codes(codes), min(POSTERIOR_K, len(db)))
        post = estimate(params.iloc[ids].reset_index(drop=True), s)
        e = nonconformity(post, row)
        scores.append(e)
        raw.append({key: v <= 0 for key, v in e.items()})
        report(progress, n, queries, "calibrating")
    margins = conformal_margins(scores)
    raw_cov = {key: float(np.mean([r[key] for r in raw])) for key in raw[0]}
    save_calibration(
        db.path, db.fingerprint, margins, queries=len(scores), raw_coverage=raw_cov,
        seed_offset=CALIBRATION_SEED_OFFSET,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    rec, why = load_calibration(db.path, db.fingerprint)
    if rec is None:  # pragma: no cover - just written
        raise GliomatchError(why or "calibration not written")
    return rec
